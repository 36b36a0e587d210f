"""Fine-tuning metrics for GLUE, SNLI-VE and Hateful Memes: pure functions over the gathered predictions.

Each is computed once, from every prediction of a split gathered by sample index (`mmbench.lit.predict`), so a
multi-process run gives exactly the single-process number. torchmetrics provides the arithmetic; this module fixes
the conventions the GLUE / FLAVA numbers use, and tests/test_finetune_metrics.py checks each against scikit-learn
or scipy:

- `f1`: binary F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate"), as GLUE reports it.
- `acc_f1_mean`: the mean of accuracy and F1, the single MRPC / QQP number of the FLAVA paper's Table 4.
- `mcc`: Matthews correlation (CoLA); 0 when a confusion-matrix margin is empty (scikit-learn's convention).
- `pearson` / `spearman`: STS-B; computed in float64; 0 when either side is constant (no association measurable
  rather than NaN, which would poison the NLP average; the same convention as `mcc`).
- `roc_auc`: Hateful Memes, from the softmax probability of class 1; NaN when the labels hold one class only
  (undefined; the protocol turns that into an error naming the split).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_f1_score,
    binary_matthews_corrcoef,
    multiclass_accuracy,
    multiclass_matthews_corrcoef,
)
from torchmetrics.functional.regression import pearson_corrcoef, spearman_corrcoef


def accuracy(logits: Tensor, target: Tensor) -> float:
    """logits (N, C), target (N,) class ids -> fraction of argmax predictions equal to the target."""
    return float(multiclass_accuracy(logits.argmax(-1), target, num_classes=logits.shape[-1], average="micro"))


def f1(logits: Tensor, target: Tensor) -> float:
    """Binary F1 of the positive class 1; 0 when there is no true positive."""
    return float(binary_f1_score(logits.argmax(-1), target))


def acc_f1_mean(logits: Tensor, target: Tensor) -> float:
    return (accuracy(logits, target) + f1(logits, target)) / 2


def mcc(logits: Tensor, target: Tensor) -> float:
    pred = logits.argmax(-1)
    if logits.shape[-1] == 2:
        return float(binary_matthews_corrcoef(pred, target))
    return float(multiclass_matthews_corrcoef(pred, target, num_classes=logits.shape[-1]))


def roc_auc(logits: Tensor, target: Tensor) -> float:
    """Area under the ROC curve of P(class 1) = softmax(logits)[:, 1]; NaN if `target` holds a single class."""
    if target.unique().numel() < 2:
        return float("nan")
    return float(binary_auroc(logits.double().softmax(-1)[:, 1], target))


def _constant(x: Tensor) -> bool:
    return bool((x == x[0]).all()) if x.numel() else True


def pearson(pred: Tensor, target: Tensor) -> float:
    """pred (N,), target (N,) real scores -> Pearson r (0 when either side is constant)."""
    if _constant(pred) or _constant(target):
        return 0.0
    return float(pearson_corrcoef(pred.double(), target.double()))


def spearman(pred: Tensor, target: Tensor) -> float:
    """Spearman rho with average ranks for ties, as scipy (0 when either side is constant)."""
    if _constant(pred) or _constant(target):
        return 0.0
    return float(spearman_corrcoef(pred.double(), target.double()))


CLASSIFICATION: dict[str, Callable[[Tensor, Tensor], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "acc_f1_mean": acc_f1_mean,
    "mcc": mcc,
    "roc_auc": roc_auc,
}
REGRESSION: dict[str, Callable[[Tensor, Tensor], float]] = {"pearson": pearson, "spearman": spearman}


def compute(names: list[str], output: Tensor, target: Tensor, regression: bool = False) -> dict[str, float]:
    """The named metrics of one split. `output`: logits (N, C) for classification, scores (N,) for regression."""
    table = REGRESSION if regression else CLASSIFICATION
    unknown = [n for n in names if n not in table]
    if unknown:
        kind = "regression" if regression else "classification"
        raise KeyError(f"no {kind} metric {unknown[0]!r} (have: {', '.join(table)})")
    output = output.float() if regression else output
    target = target.float() if regression else target.long()
    return {n: table[n](output, target) for n in names}


def known(regression: bool) -> list[str]:
    return list(REGRESSION if regression else CLASSIFICATION)
