"""Rows of the per-sample log (`--log-samples`, written by `mmbench.results.samples`), shared by the protocols.

Each protocol turns the gathered predictions its metrics are computed from into rows; the helpers here add what
every row has: the sample index, and the reader's `sample_ref` (the dataset's own id, the image path, the text cut
to `TEXT_CHARS`), read from the split's index without decoding anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

TEXT_CHARS = 200  # enough to recognise a sentence or question; a log of 500k GLUE rows stays ~100 MB


def truncate(text: str, limit: int = TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sample_ref(reader: Any, split: str, index: int) -> dict[str, Any]:
    """`{"index", "id"?, "image"?, "text"?, "text_pair"?}` of sample `index` (texts truncated)."""
    ref = reader.sample_ref(split, index)
    return {"index": index, **{k: truncate(v) if k.startswith("text") else v for k, v in ref.items()}}


def classification_rows(
    reader: Any,
    split: str,
    index: Tensor,
    logits: Tensor,
    target: Tensor | None,
    extra: dict[str, Any] | None = None,
    scale: float = 1.0,
) -> Iterator[dict[str, Any]]:
    """index (N,), logits (N, C), target (N,) or None -> rows: the argmax `prediction` (the class the metrics
    count), its probability softmax(`scale` x logits) as `score`, `target`, `correct`; with two classes also
    `prob_1` = P(class 1), what AUROC ranks (Hateful Memes)."""
    pred = logits.argmax(-1)  # (N,) the metrics' argmax, on the same logits
    probs = (logits.double() * scale).softmax(-1)  # (N, C)
    score = probs.gather(1, pred[:, None])[:, 0]  # (N,)
    targets = target.tolist() if target is not None else [None] * len(index)
    two = logits.shape[-1] == 2
    for i, p, s, t, p1 in zip(index.tolist(), pred.tolist(), score.tolist(), targets, probs[:, -1].tolist()):
        row = {**sample_ref(reader, split, i), **(extra or {}), "prediction": p, "target": t, "score": s}
        if t is not None:
            row["correct"] = p == t
        if two:
            row["prob_1"] = p1
        yield row


def regression_rows(
    reader: Any, split: str, index: Tensor, output: Tensor, target: Tensor | None, extra: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """STS-B: the predicted value is both `prediction` and `score`; no `correct` (a regression has none)."""
    targets = target.tolist() if target is not None else [None] * len(index)
    for i, p, t in zip(index.tolist(), output.tolist(), targets):
        yield {**sample_ref(reader, split, i), **(extra or {}), "prediction": p, "target": t, "score": p}
