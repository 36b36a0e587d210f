"""Linear-probe accuracies as pure functions of predicted and true labels (fractions in [0, 1])."""

from __future__ import annotations

import torch
from torch import Tensor


def top1(pred: Tensor, target: Tensor) -> float:
    """Fraction of samples whose predicted class is the true one."""
    return float((pred == target).double().mean()) if len(target) else 0.0


def mean_per_class(pred: Tensor, target: Tensor) -> float:
    """Mean over the classes present in `target` of the per-class recall (scikit-learn's `balanced_accuracy_score`;
    the metric of Aircraft, Pets, Caltech101 and Flowers102). Classes absent from `target` are not averaged in."""
    if not len(target):
        return 0.0
    classes, inverse = torch.unique(target, return_inverse=True)
    correct = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, inverse, (pred == target).double())
    support = torch.bincount(inverse, minlength=len(classes)).double()
    return float((correct / support).mean())


METRICS = {"top1": top1, "mean_per_class": mean_per_class}
