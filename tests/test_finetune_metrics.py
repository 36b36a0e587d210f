"""Fine-tuning metrics against scikit-learn / scipy on random predictions, and their edge-case conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

from mmbench.metrics import classification as M


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("classes", [2, 3])
def test_classification_metrics_match_sklearn(seed, classes):
    gen = torch.Generator().manual_seed(seed)
    n = 101
    target = torch.randint(0, classes, (n,), generator=gen)
    logits = torch.randn(n, classes, generator=gen) + 1.5 * torch.nn.functional.one_hot(target, classes)
    pred = logits.argmax(-1).numpy()
    y = target.numpy()
    assert M.accuracy(logits, target) == accuracy_score(y, pred)  # exact: a ratio of counts
    assert M.mcc(logits, target) == pytest.approx(matthews_corrcoef(y, pred), abs=1e-12)
    if classes == 2:
        f1 = f1_score(y, pred, pos_label=1)
        assert M.f1(logits, target) == pytest.approx(f1, abs=1e-12)
        assert M.acc_f1_mean(logits, target) == pytest.approx((accuracy_score(y, pred) + f1) / 2, abs=1e-12)
        prob = torch.softmax(logits.double(), -1)[:, 1].numpy()
        assert M.roc_auc(logits, target) == pytest.approx(roc_auc_score(y, prob), abs=1e-6)


def test_roc_auc_ties_match_sklearn():
    target = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    logits = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 2.0], [0.0, 2.0], [0.0, 0.0], [0.0, 0.0], [0, 3], [0, 3]])
    prob = torch.softmax(logits.double(), -1)[:, 1].numpy()
    assert M.roc_auc(logits.float(), target) == pytest.approx(roc_auc_score(target.numpy(), prob))


@pytest.mark.parametrize("seed", [0, 1])
def test_correlations_match_scipy_with_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 6, (97,), generator=gen).float()  # STS-B-like scores with many ties
    pred = target + torch.randn(97, generator=gen)
    pred[:10] = 2.0  # ties in the predictions too
    assert M.pearson(pred, target) == pytest.approx(pearsonr(pred.numpy(), target.numpy())[0], abs=1e-6)
    assert M.spearman(pred, target) == pytest.approx(spearmanr(pred.numpy(), target.numpy())[0], abs=1e-6)


def test_degenerate_inputs_follow_documented_conventions():
    target = torch.tensor([0, 1, 0, 1])
    constant = torch.tensor([[1.0, 0.0]] * 4)  # always class 0
    assert M.mcc(constant, target) == 0.0 == matthews_corrcoef(target.numpy(), np.zeros(4, dtype=int))
    assert M.f1(constant, target) == 0.0
    assert M.pearson(torch.ones(4), torch.arange(4.0)) == 0.0 and M.spearman(torch.ones(4), torch.arange(4.0)) == 0.0
    assert np.isnan(M.roc_auc(constant, torch.zeros(4, dtype=torch.long)))


def test_compute_selects_by_name_and_rejects_unknown():
    logits, target = torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1])
    assert M.compute(["accuracy", "f1"], logits, target) == {"accuracy": 0.5, "f1": pytest.approx(2 / 3)}
    assert (
        M.compute(["pearson"], torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 2, 4]), regression=True)["pearson"] > 0.9
    )
    with pytest.raises(KeyError, match="no classification metric 'pearson'"):
        M.compute(["pearson"], logits, target)
