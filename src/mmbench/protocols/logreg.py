"""Multinomial logistic regression fitted with L-BFGS in torch, and CLIP's sweep of its L2 strength (appendix A.3).

The L2 strength `l2` (lambda) is defined by the objective

    sum_i CE(x_i W + b, y_i) + (lambda / 2) * ||W||_F^2        (the bias is not penalised)

which is scikit-learn's `LogisticRegression(penalty="l2")` objective `C * sum_i CE + 1/2 ||W||^2` divided by C:
**lambda = 1 / C exactly**, so the swept values read as CLIP's (which used scikit-learn). Both solvers minimise it
scaled by 1/n -- mean CE + lambda / (2n) ||W||^2 -- and both stop when the largest gradient entry of that scaled
objective falls below `tol` (scikit-learn passes its `tol` to L-BFGS-B as `gtol` on the same scaled objective);
`tests/test_logreg.py` checks agreement with scikit-learn.

Precision: float32. The features are float32 already, the objective is evaluated to ~1e-7 relative, three orders
below the stopping tolerance, and the argmax decisions that accuracy counts do not move at that level; float64 would
halve CPU throughput and cost 2-64x on GPUs. Losses are summed per chunk in float64 on the host and handed to the
line search in float64 (a float32 loss stalls it near the optimum). The solver follows the features' dtype: the
protocol passes float32; `tests/test_logreg.py` solves in float64 to pin the C = 1/lambda mapping to 1e-4.
Memory: one standardised copy of the features per fit, and logits formed `chunk_rows` rows at a time, so
ImageNet-sized problems (1.28M x 1024 features, 1000 classes) fit on one GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

DEFAULT_CHUNK_ROWS = 65536
SMALL_PROBLEM = 1 << 31  # rows x features x classes below which CPU solves run on one thread (see _threads_for)


@dataclass
class LogRegFit:
    """logits = (x - center) @ weight + centered_bias; `bias` is the same model's bias for uncentred x."""

    weight: Tensor  # (D, K)
    centered_bias: Tensor  # (K,)
    center: Tensor  # (D,) the training features' mean
    l2: float
    n_iter: int
    loss: float  # the scaled objective at the solution
    grad_max: float  # max |gradient| of the scaled objective at the solution, original coordinates
    converged: bool

    @property
    def bias(self) -> Tensor:
        return self.centered_bias - self.center @ self.weight  # (K,)

    def logits(self, x: Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Tensor:
        # Centring first keeps float32 logits exact when features sit far from the origin (no cancellation).
        x = x.to(self.weight.device, self.weight.dtype)
        parts = [torch.addmm(self.centered_bias, c - self.center, self.weight) for c in x.split(chunk_rows)]
        return torch.cat(parts)  # (N, K)

    def predict(self, x: Tensor) -> Tensor:
        return self.logits(x).argmax(dim=1)  # (N,)


def _objective(z: Tensor, y: Tensor, v: Tensor, c: Tensor, l2: float, chunk_rows: int) -> tuple[float, Tensor, Tensor]:
    """The scaled objective and its gradient over standardised features z, by hand (no autograd graph), in row
    chunks: logits = z @ v + c, penalty (l2 / 2) ||v||^2 with `l2` already rescaled to these coordinates."""
    n = z.shape[0]
    grad_v, grad_c = torch.zeros_like(v), torch.zeros_like(c)
    total = 0.0
    for zc, yc in zip(z.split(chunk_rows), y.split(chunk_rows)):
        logits = torch.addmm(c, zc, v)  # (c, K)
        lse = torch.logsumexp(logits, dim=1)  # (c,)
        total += float((lse - logits.gather(1, yc[:, None]).squeeze(1)).sum(dtype=torch.float64))
        probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place: (c, K)
        probs[torch.arange(len(yc), device=yc.device), yc] -= 1.0  # dCE/dlogits
        grad_v.addmm_(zc.T, probs)
        grad_c += probs.sum(dim=0)
    grad_v.div_(n).add_(v, alpha=l2 / n)
    grad_c.div_(n)
    loss = total / n + 0.5 * l2 / n * float(v.pow(2).sum(dtype=torch.float64))
    return loss, grad_v, grad_c


@contextmanager
def _threads_for(work: int, device: torch.device) -> Iterator[None]:
    """CPU solves up to ~2e9 multiply-adds per pass (20,000 x 768 x 100 is 1.5e9) run on one thread. The reasons are
    reproducibility and robustness, not raw speed: one thread keeps the numbers independent of the core count and
    of how many processes share the machine (the ranks of a CPU multi-process run each fit the same classifier, and
    must not oversubscribe the cores). Speed depends on load: on a busy two-core machine one thread evaluated the
    objective 2.4x (20,000 x 768 x 100) to 9x (8,000 x 384 x 50) faster than two; on an idle one, two threads were
    1.6-1.7x faster. Larger problems belong on a GPU; on a CPU they keep torch's thread count."""
    if device.type != "cpu" or work >= SMALL_PROBLEM:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fit_logreg(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    l2: float,
    *,
    init: LogRegFit | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
    history_size: int = 10,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> LogRegFit:
    """Minimise the objective above with `torch.optim.LBFGS` (strong-Wolfe line search) from zeros or `init`.

    `x` (N, D) and `y` (N,) stay on their device (a GPU when the caller put them there). L-BFGS runs in
    standardised coordinates -- features centred and divided by their overall RMS, the penalty rescaled to match
    -- which is the same problem exactly (the bias is free, so centring changes nothing; one global scale only
    rescales W and lambda), but far better conditioned: pooled features often sit far from the origin with a
    small spread, where plain L-BFGS stalls. The stopping test in those coordinates implies max |gradient| <= tol
    in the original ones, so a fit is never less converged than scikit-learn's at the same `tol`."""
    with _threads_for(x.shape[0] * x.shape[1] * num_classes, x.device):
        return _fit(x, y.to(x.device, torch.long), num_classes, l2, init, max_iter, tol, history_size, chunk_rows)


def _fit(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    l2: float,
    init: LogRegFit | None,
    max_iter: int,
    tol: float,
    history_size: int,
    chunk_rows: int,
) -> LogRegFit:
    mu = x.mean(dim=0)  # (D,)
    z = x - mu  # (N, D): one copy per fit, so that no evaluation pays for centring again
    scale = float(z.pow(2).mean().sqrt()) if len(x) > 1 else 1.0
    scale = scale if scale > 0 else 1.0
    z.div_(scale)
    l2_z = l2 / scale**2  # (l2 / 2) ||W||^2 = (l2 / scale^2 / 2) ||v||^2 with v = scale * W
    if init is not None:  # the same model in this fit's coordinates
        w0 = init.weight.detach().to(x)
        v = (w0 * scale).contiguous()
        c = (init.centered_bias.detach().to(x) + (mu - init.center.to(x)) @ w0).contiguous()
    else:
        # W = 0 with the intercept that is optimal for it, the log class frequencies (the features are centred),
        # shifted to mean 0: softmax ignores a common shift, and gradient steps keep the mean, so the solution is
        # the mean-0 intercept that scikit-learn's zero start reaches too. Starting at c = 0 instead cost hundreds
        # of float32-noisy iterations at strong regularisation, where W's curvature (~lambda) dwarfs c's (~1/K).
        v = x.new_zeros(x.shape[1], num_classes)
        counts = torch.bincount(y, minlength=num_classes).to(x.dtype)  # (K,)
        c = counts.clamp_min(0.5).div_(len(y)).log_()  # an absent class starts far down, not at -inf
        c -= c.mean()
    tol_inner = tol * min(1.0, 1.0 / scale)  # |dL/dW| = scale |dL/dv|, |dL/db| = |dL/dc|
    opt = torch.optim.LBFGS(
        [v, c],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol_inner,
        tolerance_change=1e-12,  # stop on the gradient test (tol), or when a step makes no progress at all
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        loss, v.grad, c.grad = _objective(z, y, v, c, l2_z, chunk_rows)
        return torch.tensor(loss, dtype=torch.float64)  # the line search compares losses: keep every digit

    opt.step(closure)
    n_iter = int(opt.state[v].get("n_iter", 0))
    loss, gv, gc = _objective(z, y, v, c, l2_z, chunk_rows)
    # W = v / scale, so dL/dW = scale * dL/dv; the bias gradient is the same in both (centring moves only the
    # W-gradient, by center * dL/db, which vanishes at the solution)
    grad_max = max(float(gv.abs().max()) * scale, float(gc.abs().max()))
    return LogRegFit(v / scale, c, mu, l2, n_iter, loss, grad_max, converged=grad_max <= tol)


# ---- the sweep ------------------------------------------------------------------------------------------------


@dataclass
class SweepPoint:
    l2: float
    score: float
    n_iter: int | None = None


@dataclass
class SweepResult:
    best_l2: float  # the pick: the strongest strength whose score is within `tolerance` of `max_score`
    best_score: float  # the pick's score
    best_state: Any  # what `evaluate` returned for the pick (a LogRegFit for our solver)
    points: list[SweepPoint] = field(default_factory=list)  # in the order evaluated
    tolerance: float = 0.0
    max_score: float = float("nan")  # the best score of any strength
    candidates: list[float] = field(default_factory=list)  # every strength within `tolerance` of it, strong first


def sweep_l2(
    evaluate: Callable[[float, Any], tuple[float, Any]],
    l2_min: float = 1e-6,
    l2_max: float = 1e6,
    steps_per_decade: int = 8,
    tolerance: float = 0.0,
) -> SweepResult:
    """CLIP's parametric search of the L2 strength: every decade from `l2_max` down to `l2_min`, then binary
    refinement around the pick (half a decade, a quarter, ...) down to `1/steps_per_decade` decade.

    `evaluate(l2, warm)` fits at `l2` starting from `warm` (the state of the nearest strength already fitted, None
    first) and returns (validation score, state). The coarse pass runs from strong to weak regularisation, so each
    fit starts from the solution one decade stronger -- the regularisation path -- and the refinement points start
    from their neighbour.

    The pick: scores within `tolerance` of the best score count as tied, and ties go to the stronger
    regularisation. With `tolerance` = what one validation sample can change (the caller's choice, see
    `protocols.linear_probe`), one prediction flipping on float rounding (another CPU kernel takes another solver
    path) no longer hands the pick to whichever strength gained the sample. Such flips happen where the objective
    is nearly flat -- weak regularisation, loosely determined solutions -- and the rule anchors the pick at the
    strong edge of the near-best plateau, where fits are well conditioned. It narrows the flips, it cannot remove
    them: a score sitting exactly at the edge of the band still decides the pick."""
    s = steps_per_decade
    lo, hi = math.ceil(math.log10(l2_min) * s - 1e-9), math.floor(math.log10(l2_max) * s + 1e-9)
    done: dict[int, tuple[float, Any]] = {}
    points: list[SweepPoint] = []

    def run(pos: int) -> None:
        nearest = min(done, key=lambda q: (abs(q - pos), -q)) if done else None
        score, state = evaluate(10.0 ** (pos / s), done[nearest][1] if nearest is not None else None)
        done[pos] = (float(score), state)
        points.append(SweepPoint(10.0 ** (pos / s), float(score), getattr(state, "n_iter", None)))

    def within() -> list[int]:
        top = max(score for score, _ in done.values())
        # the relative slack absorbs the rounding of `top - tolerance` when scores are multiples of `tolerance`
        return sorted((q for q in done if top - done[q][0] <= tolerance * (1 + 1e-9) + 1e-12), reverse=True)

    for pos in range(hi - hi % s, lo - 1, -s):  # decades only, strong -> weak
        run(pos)
    if not done:  # a range narrower than a decade: start from its upper end
        run(hi)
    step = s // 2
    while step >= 1:
        centre = within()[0]
        for pos in (centre - step, centre + step):
            if lo <= pos <= hi and pos not in done:
                run(pos)
        step //= 2
    tied = within()
    b = tied[0]
    top = max(score for score, _ in done.values())
    return SweepResult(10.0 ** (b / s), done[b][0], done[b][1], points, tolerance, top, [10.0 ** (q / s) for q in tied])
