"""How far two fits of the same logistic-regression objective can disagree, derived from what each fit left undone,
so that tests compare predictions only where the answer is decided (test helper, not a fixture).

Two solutions of the same objective F -- float32 and float64, CPU and GPU, two CPU kernels -- agree only up to
where each solver stopped. Their stopping rules (max |gradient| <= tol) do not make their argmaxes equal: on
`test_logreg`'s data the float32 fit (tol 1e-4) moves margins by up to 0.28 from the float64 optimum's, whose own
top-2 margins go down to 0.045. A bound from the tolerance alone (|g|_2 <= sqrt(P) tol, smallest curvature) is
~50 and decides nothing; the residual gradient each fit actually left, measured in the H+ metric, decides 91% of
the samples. The derivation:

- parameters theta = (W, c) for logits (x - m) W + c, m the training mean; F(theta) = mean CE + l2/(2n) ||W||^2,
  the objective both solvers minimise (`protocols.logreg`). F is convex with one flat direction, c + t (1, ..., 1),
  which changes no prediction; H+ is the pseudo-inverse of its Hessian H at the optimum.
- a fit theta_f with residual gradient g_f = grad F(theta_f) (evaluated here in float64) sits at
  theta_f - theta* = H+ g_f (to first order: the local quadratic model of F).
- the margin of class j over k on sample x, z = (x - m, 1), changes by a^T (theta_f - theta*), a = (e_j - e_k) (x) z,
  and by Cauchy-Schwarz in the H+ metric |a^T H+ g_f| <= sqrt(a^T H+ a) * sqrt(g_f^T H+ g_f).
- two fits A and B: |margin_A - margin_B| <= sqrt(a^T H+ a) * (|g_A|_H+ + |g_B|_H+) (x 2 for the quadratic model's
  neglected terms), plus the float rounding of the logits themselves.

Where B's margin of its argmax j over every k exceeds that bound, A must predict j too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SAFETY = 2.0  # for the terms the local quadratic model of F leaves out (the fits are within ~0.01 of the optimum)


class FitGeometry:
    """The objective's curvature at a tightly solved reference fit of (x, y, l2)."""

    def __init__(self, x: Tensor, y: Tensor, num_classes: int, l2: float, reference):
        self.x, self.y, self.l2, self.k = x.double().cpu(), y.cpu(), l2, num_classes
        self.m = self.x.mean(0)  # (D,)
        self.z = torch.cat([self.x - self.m, torch.ones(len(self.x), 1, dtype=torch.float64)], 1)  # (n, D+1)
        theta = self.theta(reference)
        flat = theta.reshape(-1)
        hess = torch.autograd.functional.hessian(lambda v: self.objective(v.view_as(theta)), flat)  # (P, P)
        ev, vec = torch.linalg.eigh(hess)
        keep = ev > ev[-1] * 1e-10  # drop the flat direction (and nothing else: F is strictly convex elsewhere)
        assert int((~keep).sum()) == 1, ev[:3]
        self.h_pinv = (vec[:, keep] / ev[keep]) @ vec[:, keep].T  # (P, P)

    def theta(self, fit, shift: float = 0.0) -> Tensor:
        """`fit`'s parameters in these coordinates; it was fitted on x + shift."""
        w, b = fit.weight.double().cpu(), fit.bias.double().cpu()  # (D, K), (K,)
        return torch.cat([w, (b + (self.m + shift) @ w)[None]], 0)  # (D+1, K)

    def objective(self, theta: Tensor) -> Tensor:
        n = len(self.y)
        ce = torch.nn.functional.cross_entropy(self.z @ theta, self.y, reduction="mean")
        return ce + self.l2 / (2 * n) * theta[:-1].pow(2).sum()

    def residual(self, fit, shift: float = 0.0) -> float:
        """|g|_H+ of the fit's gradient: how far, in the metric that matters, its solver stopped from the optimum."""
        theta = self.theta(fit, shift).requires_grad_(True)
        (g,) = torch.autograd.grad(self.objective(theta), theta)
        g = g.reshape(-1)
        return math.sqrt(max(float(g @ self.h_pinv @ g), 0.0))

    def margin_bounds(self, x: Tensor, winner: Tensor, residual: float) -> Tensor:
        """(N, K): how much the margin of `winner` over each class can differ between two fits whose residuals
        sum to `residual`, on samples x (N, D)."""
        z = torch.cat([x.double().cpu() - self.m, torch.ones(len(x), 1, dtype=torch.float64)], 1)  # (N, D+1)
        p = self.h_pinv.view(z.shape[1], self.k, z.shape[1], self.k)
        m = torch.einsum("na,akbl,nb->nkl", z, p, z)  # (N, K, K): z^T H+_{kl} z
        mjj = m[torch.arange(len(z)), winner, winner]  # (N,)
        mkk = m.diagonal(dim1=1, dim2=2)  # (N, K)
        mjk = m[torch.arange(len(z)), winner]  # (N, K)
        return SAFETY * residual * (mjj[:, None] + mkk - 2 * mjk).clamp_min(0).sqrt()


def rounding(fit, x: Tensor) -> Tensor:
    """(N,): a bound on the float rounding of any one margin as `fit.logits` computes it (two dot products of
    length D+1 in the fit's dtype, on inputs already rounded to it)."""
    eps = torch.finfo(fit.weight.dtype).eps
    w = fit.weight.double().cpu().abs()  # (D, K)
    size = (x.double().cpu().abs() + fit.center.double().cpu().abs()) @ w  # (N, K)
    return 2 * (x.shape[1] + 2) * eps * (size + fit.centered_bias.double().cpu().abs()).max(1).values


def assert_agree_where_decided(geo: FitGeometry, a, b, x: Tensor, shift_a=0.0, shift_b=0.0, min_decided=0.9):
    """Fits `a` (on x + shift_a) and `b` (on x + shift_b) predict the same class on every sample whose margin under
    `b` exceeds the derived bound, the bound holds for every margin, and it decides at least `min_decided`."""
    xa, xb = (x + shift_a).to(a.weight.dtype), (x + shift_b).to(b.weight.dtype)
    la, lb = a.logits(xa.to(a.weight.device)).double().cpu(), b.logits(xb.to(b.weight.device)).double().cpu()
    winner = lb.argmax(1)  # (N,)
    rows = torch.arange(len(x))
    margin_a = la[rows, winner][:, None] - la  # (N, K)
    margin_b = lb[rows, winner][:, None] - lb
    bound = geo.margin_bounds(x, winner, geo.residual(a, shift_a) + geo.residual(b, shift_b))
    bound = bound + (rounding(a, xa) + rounding(b, xb))[:, None]
    assert bool(((margin_a - margin_b).abs() <= bound).all()), "the derived bound does not hold"
    others = torch.ones_like(margin_b, dtype=torch.bool)
    others[rows, winner] = False
    decided = ((margin_b > bound) | ~others).all(1)  # (N,)
    agree = la.argmax(1) == winner
    assert bool(agree[decided].all()), f"{int((~agree[decided]).sum())} decided predictions differ"
    assert float(decided.double().mean()) >= min_decided, float(decided.double().mean())
    return decided
