"""What a linear-probe sweep must satisfy on any CPU: properties, not the float-path-dependent values (how many
strengths the refinement visited, which of two near-tied strengths won)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch


def by_hand_tolerance(metric: str, val_labels: torch.Tensor) -> float:
    """One validation sample's largest effect on the metric, counted here from the labels: 1/n for top-1; for mean
    per-class accuracy one sample of the smallest class, 1/n_c of its recall, averaged over the C present classes."""
    counts = {}
    for y in val_labels.tolist():
        counts[y] = counts.get(y, 0) + 1
    if metric == "top1":
        return 1 / len(val_labels)
    return 1 / (len(counts) * min(counts.values()))


def assert_sweep_properties(d: dict[str, Any], tolerance: float, l2_min=1e-6, l2_max=1e6, steps=8) -> None:
    """`d` is a result's details. The sweep covers every decade of its range, refines around its pick down to
    1/steps decade, and the pick is the strongest strength within `tolerance` of the best score; the recorded
    selection says exactly that."""
    pos = {round(math.log10(p["l2"]) * steps): p["val"] for p in d["sweep"]}
    assert all(math.isclose(math.log10(p["l2"]) * steps, q, abs_tol=1e-9) for p, q in zip(d["sweep"], pos))
    lo, hi = round(math.log10(l2_min) * steps), round(math.log10(l2_max) * steps)
    assert set(range(lo, hi + 1, steps)) <= set(pos), "every decade from l2_max to l2_min"
    assert all(lo <= q <= hi for q in pos)
    pick = round(math.log10(d["l2"]) * steps)
    assert {q for q in (pick - 1, pick + 1) if lo <= q <= hi} <= set(pos), "refined to 1/steps around the pick"
    best = max(pos.values())
    tied = sorted((q for q, v in pos.items() if best - v <= tolerance + 1e-9), reverse=True)
    assert pick == tied[0] and d["val_score"] == pos[pick] and best - d["val_score"] <= tolerance + 1e-9
    sel = d["selection"]
    assert sel["tolerance"] == pytest.approx(tolerance, rel=1e-12) and sel["best_val"] == best and sel["l2"] == d["l2"]
    assert [round(math.log10(c["l2"]) * steps) for c in sel["candidates"]] == tied
    assert [c["val"] for c in sel["candidates"]] == [pos[q] for q in tied]
    assert d["C"] == pytest.approx(1 / d["l2"])
