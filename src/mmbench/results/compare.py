"""Per (model, task, score) differences between two results folders: `mmbench compare A B [--tol X] [--subset]`.

    >>> from mmbench.results.compare import compare
    >>> c = compare("build/ci-slice", "results/synthetic", tol=1.0, subset=True)
    >>> c.ok, c.max_abs_diff, len(c.failures)
    >>> print(c.table())

A results folder is what `mmbench run --output DIR` writes, `DIR/runs/<model>/<task>.json` (the committed synthetic
runs are the folder `results/synthetic`). Every (model, task) found in either folder gives rows:

- both `ok`: one row per score key (the numbers entering the averages, 0-100); |A - B| <= tol passes
  (`same` when equal, `within` otherwise), more is `beyond`. A key on one side only fails (`missing in A/B`);
- both `n/a`: one row, passes (the same capability verdict); `ok` on one side and `n/a` on the other fails;
- in one folder only: fails (`only in A` / `only in B`), except that with `subset=True` a result of B that A
  lacks passes as `not in A`: A is a slice of B, as CI's re-run slice is of the committed results;
- different config hashes: fails (`config differs`) whatever the numbers, because the two results were made
  with different settings (a committed result older than its task's recipe must be regenerated, not compared).

The tolerance is absolute, in score points; the CLI exits 1 when any row fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mmbench.errors import ConfigError, DataError
from mmbench.results import store
from mmbench.results.schema import TaskResult

FAILING = ("beyond", "missing in A", "missing in B", "only in A", "only in B", "status differs", "config differs")
_EPS = 1e-9  # scores are stored to 4 decimals; a difference of exactly `tol` passes despite binary rounding


@dataclass(frozen=True)
class ScoreDiff:
    """One row: a score of one (model, task), or the whole result when `score` is "" (n/a, missing, config)."""

    model: str
    task: str
    score: str
    a: float | None
    b: float | None
    status: str  # same | within | beyond | n/a | not in A | one of FAILING
    detail: str = ""

    @property
    def diff(self) -> float | None:
        return None if self.a is None or self.b is None else self.a - self.b

    @property
    def failed(self) -> bool:
        return self.status in FAILING


@dataclass(frozen=True)
class Comparison:
    a: Path
    b: Path
    tol: float
    subset: bool
    rows: tuple[ScoreDiff, ...]

    @property
    def failures(self) -> tuple[ScoreDiff, ...]:
        return tuple(r for r in self.rows if r.failed)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def max_abs_diff(self) -> float:
        return max((abs(r.diff) for r in self.rows if r.diff is not None), default=0.0)

    def table(self) -> str:
        """The rows as an aligned text table (B's results that a subset A lacks are only counted), then a summary."""
        head = ("model", "task", "score", "A", "B", "A - B", "status")
        body = [
            (r.model, r.task, r.score, _num(r.a), _num(r.b), _num(r.diff, signed=True), _status(r))
            for r in self.rows
            if r.status != "not in A"
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines + [self.summary()])

    def summary(self) -> str:
        scored = sum(1 for r in self.rows if r.diff is not None)
        verdict = f"{len(self.failures)} failing" if self.failures else "all pass"
        skipped = sum(1 for r in self.rows if r.status == "not in A")
        subset = f"; {skipped} results of B not in A (subset)" if skipped else ""
        return (
            f"A = {self.a}, B = {self.b}: {scored} scores compared, max |A - B| = {self.max_abs_diff:.4f} "
            f"(tolerance {self.tol:g}){subset}; {verdict}"
        )


def compare(a: str | Path, b: str | Path, tol: float = 0.0, subset: bool = False) -> Comparison:
    """Compare the results in folder `a` with those in folder `b` (see the module docstring for the rules)."""
    if not isinstance(tol, int | float) or isinstance(tol, bool) or not math.isfinite(tol) or tol < 0:
        raise ConfigError(f"--tol {tol!r}: expected a non-negative number of score points")
    a, b = Path(a), Path(b)
    left, right = _results(a), _results(b)
    rows: list[ScoreDiff] = []
    for key in sorted(set(left) | set(right)):
        ra, rb = left.get(key), right.get(key)
        if ra is None or rb is None:
            status = "not in A" if ra is None and subset else "only in A" if rb is None else "only in B"
            rows.append(ScoreDiff(*key, "", None, None, status))
        else:
            rows += _pair(ra, rb, float(tol))
    return Comparison(a, b, float(tol), subset, tuple(rows))


def _results(folder: Path) -> dict[tuple[str, str], TaskResult]:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such results folder")
    found = {(r.model, store.name_of(r)): r for r in store.read_all(folder)}
    if not found:
        raise DataError(f"{folder}: no results in it (expected {folder}/runs/<model>/<task>.json)")
    return found


def _pair(ra: TaskResult, rb: TaskResult, tol: float) -> list[ScoreDiff]:
    model, task = ra.model, store.name_of(ra)
    if ra.config_hash != rb.config_hash:
        detail = f"{ra.config_hash} vs {rb.config_hash}: made with different settings"
        return [ScoreDiff(model, task, "", None, None, "config differs", detail)]
    if ra.status != rb.status:
        return [ScoreDiff(model, task, "", None, None, "status differs", f"{ra.status} vs {rb.status}")]
    if ra.status == "n/a":
        return [ScoreDiff(model, task, "", None, None, "n/a")]
    rows = []
    for key in sorted(set(ra.scores) | set(rb.scores)):
        va, vb = ra.scores.get(key), rb.scores.get(key)
        if va is None or vb is None:
            rows.append(ScoreDiff(model, task, key, va, vb, "missing in A" if va is None else "missing in B"))
            continue
        gap = abs(va - vb)
        status = "same" if gap == 0 else "within" if gap <= tol + _EPS else "beyond"
        rows.append(ScoreDiff(model, task, key, float(va), float(vb), status))
    return rows


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _status(row: ScoreDiff) -> str:
    return f"{row.status} ({row.detail})" if row.detail else row.status
