"""BEiT-3's tokenizer: `XLMRobertaTokenizer` over a sentencepiece model, and the tiny one `beit3-tiny` trains locally.

The released `beit3.spm` must be loaded the way that gives fairseq's id layout (`<s>`=0, `<pad>`=1, `</s>`=2,
`<unk>`=3, every other piece = its sentencepiece id + 1, `<mask>` last): copy it to `<dir>/sentencepiece.bpe.model`
and call `XLMRobertaTokenizer.from_pretrained(dir)`. In transformers 5, `XLMRobertaTokenizer(vocab_file=...)`
swallows the keyword and silently builds a 5-token tokenizer that maps every word to `<unk>`.

This module imports nothing heavy at import time: `mmbench.models.tokenizers` registers `tiny_sentencepiece`.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

from mmbench.paths import atomic_write, cache_dir

SPM_FILENAME = "sentencepiece.bpe.model"  # the file name XLMRobertaTokenizer.from_pretrained looks for

# Trainer settings of the tiny model; part of its cache key. Unigram (as XLM-R's converter assumes) with the
# default special ids unk=0, bos=1, eos=2, which is what yields the fairseq layout after the +1 offset.
_TINY_TRAINER = {
    "model_type": "unigram",
    "vocab_size": 300,
    "hard_vocab_limit": False,
    "character_coverage": 1.0,
    "num_threads": 1,  # deterministic
    "minloglevel": 2,
}


def tiny_corpus() -> list[str]:
    """The training text: the tiny word list in 20 deterministic orders (so that whole words become pieces),
    plus every printable ASCII character (so that no ASCII text maps to `<unk>`)."""
    from mmbench.models.tokenizers import TINY_WORDS

    words = list(dict.fromkeys(TINY_WORDS))
    lines = []
    for r in range(1, 21):
        shift = (7 * r) % len(words)
        order = words[shift:] + words[:shift]
        order = order[::-1] if r % 2 else order
        lines += [" ".join(order[i : i + 8]) for i in range(0, len(order), 8)]
    lines.append(" ".join(string.ascii_letters + string.digits + string.punctuation))
    return lines


def tiny_sentencepiece_model() -> Path:
    """Train (once; cached under `cache_dir()` by content) the tiny sentencepiece model; returns its directory."""
    import sentencepiece as spm

    corpus = tiny_corpus()
    key = hashlib.sha256(repr((corpus, sorted(_TINY_TRAINER.items()), spm.__version__)).encode()).hexdigest()[:16]
    folder = cache_dir() / "tokenizers" / f"tiny-sentencepiece-{key}"
    if not (folder / SPM_FILENAME).is_file():
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, **_TINY_TRAINER)
        atomic_write(folder / SPM_FILENAME, lambda p: p.write_bytes(buf.getvalue()))
    return folder


def tiny_sentencepiece(max_length: int = 64) -> Any:
    """Built-in `mmbench:tiny-sentencepiece`: a few hundred pieces, BEiT-3's id layout."""
    from transformers import XLMRobertaTokenizer

    return XLMRobertaTokenizer.from_pretrained(str(tiny_sentencepiece_model()), model_max_length=max_length)


def spm_tokenizer(spm_file: Path, max_length: int) -> Any:
    """`XLMRobertaTokenizer` over a sentencepiece model file such as the released `beit3.spm` (see module doc)."""
    from transformers import XLMRobertaTokenizer

    with tempfile.TemporaryDirectory(prefix="mmbench-spm-") as folder:
        shutil.copyfile(spm_file, Path(folder) / SPM_FILENAME)
        return XLMRobertaTokenizer.from_pretrained(folder, model_max_length=max_length)
