"""Fine-tuning metrics for GLUE, SNLI-VE and Hateful Memes: pure functions over the gathered predictions.

Each is computed once, from every prediction of a split gathered by sample index (`mmbench.lit.predict`), so a
multi-process run gives exactly the single-process number. torchmetrics provides the arithmetic (the confusion
matrix as exact counts, from which accuracy, F1 and MCC are exact float64 ratios rather than torchmetrics'
float32 ones; AUROC; the correlations); this module fixes the conventions the GLUE / FLAVA numbers use, and
tests/test_finetune_metrics.py checks each against scikit-learn or scipy:

- `f1`: binary F1 of the positive class 1 (MRPC "equivalent", QQP "duplicate"), as GLUE reports it.
- `acc_f1_mean`: the mean of accuracy and F1, the single MRPC / QQP number of the FLAVA paper's Table 4.
- `mcc`: Matthews correlation (CoLA); 0 when a confusion-matrix margin is empty (scikit-learn's convention).
- `pearson` / `spearman`: STS-B (Pearson in float64; torchmetrics ranks Spearman in float32); 0 when either side
  is constant (no association measurable rather than NaN, which would poison the NLP average; as for `mcc`).
- `roc_auc`: Hateful Memes, from the softmax probability of class 1; NaN when the labels hold one class only
  (undefined; the protocol turns that into an error naming the split).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, multiclass_confusion_matrix
from torchmetrics.functional.regression import pearson_corrcoef, spearman_corrcoef


def confusion(logits: Tensor, target: Tensor) -> list[list[int]]:
    """C[true][predicted] counts of the argmax predictions (torchmetrics' confusion matrix, as exact integers)."""
    c = logits.shape[-1]
    return multiclass_confusion_matrix(logits.argmax(-1), target, num_classes=c).tolist()


def accuracy(logits: Tensor, target: Tensor) -> float:
    """logits (N, C), target (N,) class ids -> fraction of argmax predictions equal to the target."""
    m = confusion(logits, target)
    return sum(m[i][i] for i in range(len(m))) / max(1, sum(map(sum, m)))


def f1(logits: Tensor, target: Tensor) -> float:
    """Binary F1 of the positive class 1; 0 when there is no true positive."""
    m = confusion(logits, target)
    tp, fp, fn = m[1][1], sum(r[1] for r in m) - m[1][1], sum(m[1]) - m[1][1]
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def acc_f1_mean(logits: Tensor, target: Tensor) -> float:
    return (accuracy(logits, target) + f1(logits, target)) / 2


def mcc(logits: Tensor, target: Tensor) -> float:
    """Matthews correlation from the confusion matrix (multiclass form; the binary one for 2 classes)."""
    m = confusion(logits, target)
    n, correct = sum(map(sum, m)), sum(m[i][i] for i in range(len(m)))
    true, pred = [sum(r) for r in m], [sum(col) for col in zip(*m)]
    cov_tp = correct * n - sum(t * p for t, p in zip(true, pred))
    cov_pp, cov_tt = n * n - sum(p * p for p in pred), n * n - sum(t * t for t in true)
    return cov_tp / math.sqrt(cov_tt * cov_pp) if cov_tt and cov_pp else 0.0


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
