"""CIDEr-D as COCO captioning reports it (pycocoevalcap 1.2's `Cider`, after its `PTBTokenizer`), without Java.

OpenFlamingo and every COCO / Flickr30K captioning number go through pycocoevalcap's `COCOEvalCap`, whose "CIDEr"
entry is `Cider().compute_score(PTBTokenizer().tokenize(references), PTBTokenizer().tokenize(candidates))`. This
module computes the same thing: `ptb_tokenize` / `tokenize_captions` replay the Stanford tokenizer the jar runs (see
`mmbench.metrics.ptb_tokenizer` for how, and for its two known, rare differences), and `cider` follows
`CiderScorer` step by step (Vedantam et al. 2015, the "-D" variant):

- n-grams of 1..4 words of whitespace-split tokenized captions; a candidate and each reference become, per n, a
  vector of term frequency x (log(#images) - log(max(1, document frequency))), the document frequency of an n-gram
  being the number of evaluated images with it in at least one reference (the idf comes from the evaluated set);
- per n, the cosine of candidate and reference vectors with the candidate's weights clipped at the reference's
  (min(c, r) * r), not divided when either norm is 0, times a length penalty exp(-delta^2 / (2 * 6^2)) where delta
  is the difference in *bigram* counts (pycocoevalcap's "length"; it differs from a word count only for an empty
  caption, which scores 0 anyway);
- the image's score is 10 x the mean over n, averaged over its references; the corpus score is the mean over
  images. Returned as pycocoevalcap returns it (COCO papers print 100x this).

With a single image every idf is log(1) - log(1) = 0, so every score is 0, as in pycocoevalcap.
tests/test_cider.py checks tokenizer and scores against pycocoevalcap itself (the jar needs Java; the test skips
without it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from mmbench.metrics.ptb_tokenizer import PUNCTUATIONS, ptb_tokenize, tokenize_captions

__all__ = ["PUNCTUATIONS", "CiderScore", "cider", "ptb_tokenize", "tokenize_captions"]

MAX_N = 4  # n-gram orders 1..4
SIGMA = 6.0  # width of the Gaussian length penalty
NGram = tuple[str, ...]


class CiderScore(NamedTuple):
    """pycocoevalcap's `(score, scores)`: the corpus CIDEr-D and each image's, keyed by the references' ids."""

    score: float
    per_image: dict[Hashable, float]


def ngram_counts(sentence: str, max_n: int = MAX_N) -> dict[NGram, int]:
    """Counts of every n-gram (n = 1..max_n) of a tokenized sentence, shortest n first (the order sums run in)."""
    words = sentence.split()
    counts: dict[NGram, int] = defaultdict(int)
    for n in range(1, max_n + 1):
        for i in range(len(words) - n + 1):
            counts[tuple(words[i : i + n])] += 1
    return counts


class _Weighted(NamedTuple):
    vectors: list[dict[NGram, float]]  # per n: n-gram -> tf x idf
    norms: list[float]  # per n: Euclidean norm of that vector
    length: int  # number of bigrams (pycocoevalcap's "length")


def _weigh(counts: dict[NGram, int], document_frequency: dict[NGram, float], log_images: float) -> _Weighted:
    vectors: list[dict[NGram, float]] = [{} for _ in range(MAX_N)]
    squares = [0.0] * MAX_N
    length = 0
    for ngram, tf in counts.items():
        n = len(ngram) - 1
        weight = float(tf) * (log_images - math.log(max(1.0, document_frequency.get(ngram, 0.0))))
        vectors[n][ngram] = weight
        squares[n] += weight**2
        if n == 1:
            length += tf
    return _Weighted(vectors, [math.sqrt(s) for s in squares], length)


def _similarity(candidate: _Weighted, reference: _Weighted, sigma: float) -> list[float]:
    """Per n: the clipped cosine of candidate and reference, times the length penalty."""
    delta = float(candidate.length - reference.length)
    penalty = math.e ** (-(delta**2) / (2 * sigma**2))
    out = []
    for n in range(MAX_N):
        ref_vector = reference.vectors[n]
        value = 0.0
        for ngram, weight in candidate.vectors[n].items():
            ref_weight = ref_vector.get(ngram, 0.0)
            value += min(weight, ref_weight) * ref_weight
        if candidate.norms[n] != 0 and reference.norms[n] != 0:
            value /= candidate.norms[n] * reference.norms[n]
        out.append(value * penalty)
    return out


def _check(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> None:
    if not references:
        raise ValueError("cider: no images to score")
    if candidates.keys() != references.keys():
        missing = [k for k in references if k not in candidates][:3]
        extra = [k for k in candidates if k not in references][:3]
        raise ValueError(f"cider: candidates and references differ in image ids (no candidate for {missing}, "
                         f"no references for {extra})")  # fmt: skip
    for key, refs in references.items():
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"cider: image {key!r} needs a non-empty list of reference captions, got {refs!r}")


def cider(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    tokenized: bool = False,
    sigma: float = SIGMA,
) -> CiderScore:
    """CIDEr-D of one candidate caption per image against that image's references, as pycocoevalcap scores it.

    `tokenized=False` (the default) runs pycocoevalcap's tokenization first, references and candidates each as one
    call in their mappings' order; `tokenized=True` takes the captions as already tokenized (space-separated).
    """
    _check(candidates, references)
    keys = list(references)
    if tokenized:
        hypotheses = dict(candidates)
        refs = {key: list(references[key]) for key in keys}
    else:
        flat = [caption for key in keys for caption in references[key]]
        tokens = iter(tokenize_captions(flat))
        refs = {key: [next(tokens) for _ in references[key]] for key in keys}
        hypotheses = dict(zip(candidates, tokenize_captions(list(candidates.values()))))

    ref_counts = {key: [ngram_counts(r) for r in refs[key]] for key in keys}
    document_frequency: dict[NGram, float] = defaultdict(float)
    for counts in ref_counts.values():
        for ngram in {ngram for c in counts for ngram in c}:
            document_frequency[ngram] += 1
    log_images = math.log(float(len(keys)))

    per_image = {}
    for key in keys:
        candidate = _weigh(ngram_counts(hypotheses[key]), document_frequency, log_images)
        total = [0.0] * MAX_N
        for counts in ref_counts[key]:
            similarity = _similarity(candidate, _weigh(counts, document_frequency, log_images), sigma)
            total = [t + s for t, s in zip(total, similarity)]
        per_image[key] = float(np.mean(total)) / len(ref_counts[key]) * 10.0
    return CiderScore(float(np.mean(list(per_image.values()))), per_image)
