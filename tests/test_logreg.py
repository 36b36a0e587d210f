"""The linear-probe classifier: our L-BFGS logistic regression against scikit-learn with C = 1 / lambda, CLIP's
L2 sweep against brute force, and the accuracies against scikit-learn's metrics."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from fit_error import FitGeometry, assert_agree_where_decided
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from mmbench.metrics.accuracy import mean_per_class, top1
from mmbench.protocols.logreg import fit_logreg, sweep_l2


def gaussian_mixture(n: int, d: int, k: int, seed: int, spread: float = 0.6, offset: float = 0.0):
    """Class means ~ N(0, spread^2), unit noise: overlapping classes, so accuracy depends on the strength."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g) * spread
    y = torch.randint(0, k, (n,), generator=g)
    return means[y] + torch.randn(n, d, generator=g) + offset, y


def objective(x, y, w, b, l2) -> float:
    """sum_i CE + lambda/2 ||W||^2 in float64: what both solvers minimise (scikit-learn's, divided by C)."""
    x, w, b = x.double(), torch.as_tensor(w).double(), torch.as_tensor(b).double()
    return float(torch.nn.functional.cross_entropy(x @ w + b, y, reduction="sum") + l2 / 2 * (w**2).sum())


@pytest.fixture(scope="module")
def data():
    x, y = gaussian_mixture(1500, 48, 8, seed=0)
    return x[:1000], y[:1000], x[1000:], y[1000:]


@pytest.mark.parametrize("l2", [1e-3, 1.0, 30.0, 1e3])
def test_same_features_and_strength_give_sklearns_accuracy(data, l2):
    x, y, xt, yt = data
    ours = fit_logreg(x, y, 8, l2)
    sk = LogisticRegression(C=1.0 / l2, max_iter=1000).fit(x.numpy(), y.numpy())  # solver="lbfgs" by default
    assert sk.solver == "lbfgs" and ours.converged
    acc_ours = top1(ours.predict(xt), yt)
    acc_sk = accuracy_score(yt.numpy(), sk.predict(xt.numpy()))
    assert abs(acc_ours - acc_sk) <= 0.005, (acc_ours, acc_sk)
    # the same objective, to the precision both stop at (per sample: the scale `tol` applies to)
    f_ours, f_sk = objective(x, y, ours.weight, ours.bias, l2), objective(x, y, sk.coef_.T, sk.intercept_, l2)
    assert abs(f_ours - f_sk) / len(y) < 1e-4


@pytest.mark.parametrize("l2", [3.0, 100.0])
def test_c_is_one_over_lambda(data, l2):
    """Solved tightly (in float64: the solver follows the features' dtype), the two solutions coincide: the
    objectives are the same function with C = 1 / lambda."""
    x, y, _, _ = data
    ours = fit_logreg(x.double(), y, 8, l2, tol=1e-8)
    sk = LogisticRegression(C=1.0 / l2, max_iter=5000, tol=1e-9).fit(x.numpy().astype(np.float64), y.numpy())
    np.testing.assert_allclose(ours.weight.numpy().T, sk.coef_, atol=1e-4)
    np.testing.assert_allclose(ours.bias.numpy(), sk.intercept_, atol=1e-4)
    other = LogisticRegression(C=2.0 / l2, max_iter=5000, tol=1e-9).fit(x.numpy().astype(np.float64), y.numpy())
    assert np.abs(ours.weight.numpy().T - other.coef_).max() > 1e-2  # and the check can tell strengths apart


def test_standardised_coordinates_change_nothing_but_convergence(data):
    """Features far from the origin with a small spread (as pooled, LayerNorm'd features are): the fit on
    x + offset and on x / 10 is the fit on x, mapped (the bias absorbs the offset; lambda scales with 1/s^2)."""
    x, y, xt, yt = data
    x, xt = x.double(), xt.double()
    base = fit_logreg(x, y, 8, 1.0, tol=1e-8)
    shifted = fit_logreg(x + 40.0, y, 8, 1.0, tol=1e-8)
    scaled = fit_logreg(x / 10.0, y, 8, 1.0 / 100.0, tol=1e-8)
    torch.testing.assert_close(shifted.weight, base.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(shifted.bias, base.bias - 40.0 * base.weight.sum(0), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(scaled.weight, base.weight * 10.0, atol=1e-5, rtol=1e-5)
    # The same predictions wherever the answer is decided, i.e. the margin exceeds what the two fits' residual
    # gradients allow (tests/fit_error.py) -- both tight float64 fits, and a float32 fit at the default tol, where
    # centring before the matmul keeps float32 logits exact far from the origin.
    geo = FitGeometry(x, y, 8, 1.0, base)
    assert_agree_where_decided(geo, shifted, base, xt, shift_a=40.0, min_decided=0.99)
    assert_agree_where_decided(geo, fit_logreg(x.float() + 40.0, y, 8, 1.0), base, xt, shift_a=40.0)
    with pytest.raises(AssertionError):  # and a fit of another objective (lambda = 3) decides next to nothing
        assert_agree_where_decided(geo, fit_logreg(x, y, 8, 3.0), base, xt)


def test_warm_start_reaches_the_same_solution_faster(data):
    x, y, _, _ = data
    cold = fit_logreg(x, y, 8, 10.0)
    warm = fit_logreg(x, y, 8, 10.0, init=fit_logreg(x, y, 8, 10.0 * 10 ** (1 / 8)))
    assert warm.converged and warm.n_iter < cold.n_iter
    assert warm.loss == pytest.approx(cold.loss, abs=1e-5)
    again = fit_logreg(x, y, 8, 10.0, init=warm)  # from a converged fit: it stays there
    assert again.converged and again.loss <= warm.loss + 1e-9
    torch.testing.assert_close(again.weight, warm.weight, atol=1e-3, rtol=0)


def test_sweep_finds_the_best_strength_on_the_eighth_decade_grid():
    calls = []

    def score(l2, warm):  # unimodal in log10(lambda), peak at 10^1.3
        calls.append((l2, warm))
        return -((math.log10(l2) - 1.3) ** 2), l2

    res = sweep_l2(score, 1e-6, 1e6, 8)
    grid = [10 ** (p / 8) for p in range(-48, 49)]
    assert res.best_l2 == pytest.approx(max(grid, key=lambda v: -((math.log10(v) - 1.3) ** 2)))  # 10^(10/8)
    coarse = [p.l2 for p in res.points[:13]]
    assert coarse == pytest.approx([10.0**e for e in range(6, -7, -1)])  # every decade, strong -> weak
    assert len(res.points) == 13 + 6  # then one binary refinement per halving: 1/2, 1/4, 1/8 decade
    assert calls[0][1] is None and calls[1][1] == pytest.approx(1e6)  # warm-started from the previous strength
    for l2, warm in calls[13:]:  # refinements start from their nearest evaluated neighbour
        assert abs(math.log10(warm) - math.log10(l2)) <= 0.5 + 1e-9


def test_sweep_ties_go_to_the_stronger_regularisation():
    res = sweep_l2(lambda l2, warm: (1.0 if 1e-2 <= l2 <= 1e2 else 0.5, None), 1e-6, 1e6, 8)
    assert res.best_l2 == pytest.approx(1e2)


def test_sweep_tolerance_keeps_the_pick_when_one_weak_fit_gains_a_sample():
    """The AVX-512 failure, replayed without floats: 24 validation samples, a plateau of 21/24 from 10^-1.7 down,
    and on one CPU the weakest fit gains one sample (22/24) from a near-tied prediction. Without a tolerance the
    pick jumps to 1e-6; with one sample's tolerance both CPUs keep the strong edge of the plateau. The limit of any
    band: a shoulder exactly one sample below the plateau sits on the band's edge, and the bump moves the pick --
    but only along the shoulder, not across the range."""
    q = 1 / 24

    def curve(bump, shoulder):
        def score(l2, warm):
            edge = 20 * q if shoulder and l2 <= 10**-0.9 else 12 * q  # the rising edge of the accuracy curve
            return (21 * q if l2 <= 10**-1.7 else edge) + (q if bump and l2 <= 1.01e-6 else 0.0), None

        return score

    exact = [sweep_l2(curve(bump, False)).best_l2 for bump in (False, True)]
    assert exact == [pytest.approx(10**-1.75), pytest.approx(1e-6)]  # tolerance 0: the flip
    plain, bumped = (sweep_l2(curve(bump, False), tolerance=q) for bump in (False, True))
    assert plain.best_l2 == pytest.approx(bumped.best_l2) == pytest.approx(10**-1.75)  # strongest 21/24 point
    assert bumped.max_score == pytest.approx(22 * q) and bumped.best_score == pytest.approx(21 * q)
    assert bumped.candidates[0] == bumped.best_l2 and bumped.candidates[-1] == pytest.approx(1e-6)
    within = [p for p in bumped.points if bumped.max_score - p.score <= q + 1e-12]
    assert sorted(p.l2 for p in within) == sorted(bumped.candidates)
    shoulder = [sweep_l2(curve(bump, True), tolerance=q).best_l2 for bump in (False, True)]
    assert shoulder == [pytest.approx(0.1), pytest.approx(10**-1.75)]  # moved along the shoulder: < 1 decade


@pytest.mark.parametrize("tolerance", [0.0, 1.0])
def test_sweep_properties_on_random_score_curves(tolerance):
    """What the protocol's tests assert of every sweep, checked on 2,000 seeded random step curves (plateaus, steps
    of 1-2, ties everywhere): every decade evaluated, both 1/8-decade neighbours of the pick evaluated, the pick the
    strongest strength within `tolerance` of the best, and `candidates` exactly those strengths."""
    rng = random.Random(0)
    for _ in range(2000):
        levels, level = {}, rng.randint(0, 5)
        for pos in range(-48, 49):
            level = max(0, level + rng.choice([-2, -1, 1, 2])) if rng.random() < 0.3 else level
            levels[pos] = level
        res = sweep_l2(lambda l2, warm, lv=levels: (lv[round(math.log10(l2) * 8)], None), 1e-6, 1e6, 8, tolerance)
        seen = {round(math.log10(p.l2) * 8): p.score for p in res.points}
        pick = round(math.log10(res.best_l2) * 8)
        assert set(range(-48, 49, 8)) <= set(seen) and {q for q in (pick - 1, pick + 1) if abs(q) <= 48} <= set(seen)
        tied = sorted((q for q, v in seen.items() if max(seen.values()) - v <= tolerance), reverse=True)
        assert pick == tied[0] and [round(math.log10(c) * 8) for c in res.candidates] == tied


def test_sweep_on_real_fits_picks_a_useful_strength(data):
    x, y, xt, yt = data
    xtr, ytr, xv, yv = x[:800], y[:800], x[800:], y[800:]

    def evaluate(l2, warm):
        fit = fit_logreg(xtr, ytr, 8, l2, init=warm)
        return top1(fit.predict(xv), yv), fit

    res = sweep_l2(evaluate, 1e-6, 1e6, 8)
    assert 1e-3 < res.best_l2 < 1e5 and res.best_state.l2 == res.best_l2
    assert res.best_score >= max(p.score for p in res.points) and res.best_score > 0.6


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # deliberately: class 5 absent
def test_accuracies_match_sklearn():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 7, (500,), generator=g)
    target[target == 5] = 6  # a class absent from the targets is not averaged in
    pred = torch.where(torch.rand(500, generator=g) < 0.6, target, torch.randint(0, 7, (500,), generator=g))
    assert top1(pred, target) == pytest.approx(accuracy_score(target.numpy(), pred.numpy()))
    assert mean_per_class(pred, target) == pytest.approx(balanced_accuracy_score(target.numpy(), pred.numpy()))
    assert mean_per_class(target, target) == top1(target, target) == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_fit_matches_cpu(data):
    x, y, xt, _ = data
    cpu, gpu = fit_logreg(x, y, 8, 1.0), fit_logreg(x.cuda(), y.cuda(), 8, 1.0)
    assert gpu.weight.is_cuda and gpu.converged and cpu.converged
    geo = FitGeometry(x, y, 8, 1.0, fit_logreg(x.double(), y, 8, 1.0, tol=1e-8))
    assert_agree_where_decided(geo, gpu, cpu, xt)  # two float32 solvers: agreement where the margin decides


def test_strong_regularisation_converges_from_a_cold_start():
    """At lambda = 1e6 W's curvature dwarfs the intercept's (~1/K), so from c = 0 L-BFGS crawled and, in float32,
    stalled unconverged; starting at the optimal intercept for W = 0 it converges at once. The solution is the
    same: tightly solved in float64 from either start."""
    g = torch.Generator().manual_seed(3)
    x, y = gaussian_mixture(3000, 96, 20, seed=3, spread=0.3)
    q, _ = torch.linalg.qr(torch.randn(96, 96, generator=g, dtype=torch.float64))
    s = torch.arange(1, 97, dtype=torch.float64).pow(-0.5)
    x = (((x.double() @ q) * s) @ q.T + 0.5 * torch.randn(96, generator=g, dtype=torch.float64)).float()
    fit = fit_logreg(x, y, 20, 1e6)
    assert fit.converged and fit.n_iter <= 20, (fit.n_iter, fit.grad_max)  # was hundreds, unconverged; now 1
    tight = fit_logreg(x.double(), y, 20, 1e6, tol=1e-10, max_iter=5000)
    sk = LogisticRegression(C=1e-6, max_iter=5000, tol=1e-10).fit(x.double().numpy(), y.numpy())
    np.testing.assert_allclose(tight.weight.numpy().T, sk.coef_, atol=1e-8)
    np.testing.assert_allclose(tight.bias.numpy(), sk.intercept_, atol=1e-5)
    torch.testing.assert_close(fit.bias.double(), tight.bias, atol=1e-3, rtol=0)
