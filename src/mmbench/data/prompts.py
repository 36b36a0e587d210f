"""In-context prompts: which training examples demonstrate each query, and the interleaved prompt they make.

OpenFlamingo's evaluation (`open_flamingo/eval/evaluate.py`, `eval/utils.py`) is the reference for the rules:
- a query set of `query_set_size` training examples is drawn per trial seed; each query gets `shots` of them;
- 0 shots: `zero_shot_text_demos` demonstrations with their `<image>` markers removed, the query with its image
  (`compute_effective_num_shots`, after Flamingo);
- RICES: the training examples whose image embeddings are nearest the query's, the most similar *last*;
- the prompt is the demonstrations' strings joined, then the query's, and the images in the same order.

One deliberate difference: OpenFlamingo samples each batch's demonstrations from one global RNG stream seeded with
`seed + rank`, so its prompts depend on the batch size and on the number of processes. Here query `i` of trial seed
`s` draws from `numpy.random.default_rng([s, i])`: the same prompts on any batch size and any number of devices,
and a resumed run rebuilds exactly the prompts it had. The query set is `default_rng(s).choice(n, size, replace=
False)`, as `get_query_set` draws it (with numpy's new generator rather than the legacy global one).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmbench.data.base import Record
from mmbench.errors import ConfigError, DataError
from mmbench.models.base import MEDIA_MARKER

PROMPT_FIELDS = ("question", "answer", "text", "class_name", "caption")


def template_fields(template: str, key: str) -> list[str]:
    """The `{field}` names a prompt template uses; an unknown one, or a malformed template, names its key."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ConfigError(f"key '{key}': not a valid prompt template ({e}): {template!r}") from None
    unknown = [n for n in names if n not in PROMPT_FIELDS]
    if unknown:
        raise ConfigError(f"key '{key}': unknown field {{{unknown[0]}}} (known: {', '.join(PROMPT_FIELDS)})")
    return names


def record_fields(rec: Record, class_names: Sequence[str]) -> dict[str, str]:
    """A record's prompt fields. `answer` is the first reference answer (OpenFlamingo's `answers[0]`), `caption` the
    first reference caption, stripped (its `sentences[0]["raw"].strip()`)."""
    answers = rec.get("answers") or []
    label = rec.get("label")
    class_name = ""
    if label is not None and class_names:
        if not 0 <= label < len(class_names):
            raise DataError(f"record {rec.get('index')}: label {label} has no class name in {list(class_names)}")
        class_name = class_names[label]
    text = rec.get("text") or ""
    captions = rec.get("captions") or []
    return {
        "question": text,
        "answer": answers[0] if answers else "",
        "text": text,
        "class_name": class_name,
        "caption": captions[0].strip() if captions else "",
    }


def effective_shots(shots: int, zero_shot_text_demos: int) -> int:
    """How many demonstrations a query gets: `shots`, or the text-only ones at 0 shots."""
    return shots if shots > 0 else zero_shot_text_demos


def query_set(n_train: int, size: int, seed: int) -> np.ndarray:
    """Indices of the trial's `size` training examples (all of them, shuffled, when the split is smaller)."""
    return np.random.default_rng(seed).choice(n_train, min(size, n_train), replace=False)


def random_demonstrations(pool: np.ndarray, k: int, seed: int, query_index: int) -> list[int]:
    """`k` distinct members of `pool` for query `query_index`, from its own generator."""
    if k > len(pool):
        raise ConfigError(f"key 'incontext.shots': {k} demonstrations per query but the query set holds {len(pool)}")
    return [int(i) for i in np.random.default_rng([seed, query_index]).choice(pool, k, replace=False)]


def build_prompt(
    demos: Sequence[Record], query: Record, demonstration: str, query_template: str, class_names: Sequence[str],
    text_only_demos: bool,
) -> str:  # fmt: skip
    """The demonstrations' strings joined, then the query's (its class name blank: the model is to say it)."""
    query = {**query, "label": None, "answers": [], "captions": []}  # nothing of the query's target in its prompt
    context = "".join(demonstration.format(**record_fields(d, class_names)) for d in demos)
    if text_only_demos:  # OpenFlamingo's 0-shot: "Keep the text but remove the image tags"
        context = context.replace(MEDIA_MARKER, "")
    return context + query_template.format(**record_fields(query, class_names))


@dataclass
class PromptBuilder:
    """Query record -> {index, prompt, images (T, C, H, W), target fields}; runs in the loader workers, where the
    demonstrations' images are decoded and dropped after use (nothing decoded is kept per sample).

    `neighbours` (RICES) maps a query index to its demonstrations' training indices, most similar last; otherwise
    they are drawn from `pool` with the trial's `seed`."""

    train: Sequence[Record]  # lazy training records: an index that decodes on access
    transform: Callable[[Any], Tensor]
    demonstration: str
    query: str
    class_names: Sequence[str]
    shots: int
    k: int  # demonstrations per query (effective_shots)
    seed: int
    pool: np.ndarray | None = None
    neighbours: np.ndarray | None = None  # (N_queries, >= k) training indices

    def demonstrations(self, index: int) -> list[int]:
        if self.neighbours is not None:
            return [int(i) for i in self.neighbours[index][-self.k :]] if self.k else []
        assert self.pool is not None
        return random_demonstrations(self.pool, self.k, self.seed, index)

    def __call__(self, rec: Record) -> dict[str, Any]:
        demos = [self.train[i] for i in self.demonstrations(rec["index"])]
        prompt = build_prompt(demos, rec, self.demonstration, self.query, self.class_names, self.shots == 0)
        shown = demos if self.shots > 0 else []
        images = torch.stack([self.transform(r["image"]) for r in [*shown, rec]])  # (T, C, H, W)
        if prompt.count(MEDIA_MARKER) != len(images):
            raise ConfigError(
                f"key 'incontext': the prompt holds {prompt.count(MEDIA_MARKER)} {MEDIA_MARKER} markers for "
                f"{len(images)} images (each demonstration and the query must hold exactly one): {prompt!r}"
            )
        return {
            "index": rec["index"],
            "prompt": prompt,
            "images": images,
            "answers": list(rec.get("answers") or rec.get("captions") or []),  # VQA answers | reference captions
            "answer_type": rec.get("answer_type", ""),
            "label": -1 if rec.get("label") is None else int(rec["label"]),
            "question_id": rec.get("question_id", rec["index"]),
        }
