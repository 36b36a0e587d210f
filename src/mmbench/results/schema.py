"""The result JSON, one per (model, task). Bump SCHEMA_VERSION on any change readers must know about.

`metrics` hold every metric on its natural scale (fractions for accuracies and recalls, correlations in [-1, 1]);
`scores` hold the numbers that enter the domain averages, on the 0-100 scale (100 x metric), as the paper reports.
A task the model cannot do is written with `status: "n/a"`, a `reason`, and no scores (it counts 0 in averages).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("ok", "n/a")
DATA_SOURCES = ("real", "synthetic")


@dataclass
class TaskResult:
    model: str
    task: str
    domain: str
    protocol: str
    status: str  # "ok" | "n/a"
    metrics: dict[str, float | None]  # None: undefined on this data (e.g. a VQA answer type with no question)
    scores: dict[str, float]
    primary: str
    n_samples: int
    data_source: str  # "real" | "synthetic"
    limit: int | None
    config: dict[str, Any]
    config_hash: str
    provenance: dict[str, Any]
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    random_init: bool = False  # tiny presets: random weights, never a real model's number
    schema_version: int = SCHEMA_VERSION

    @property
    def is_reference_grade(self) -> bool:
        """May this result appear in the real leaderboard? Real data, full split, real weights."""
        return self.data_source == "real" and self.limit is None and not self.random_init

    def to_json(self) -> dict[str, Any]:
        d = _finite(asdict(self))
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "result") -> TaskResult:
        from mmbench.errors import DataError

        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DataError(f"{where}: schema_version {version!r} is not {SCHEMA_VERSION} (re-run with --redo)")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"{where}: unknown key {unknown[0]!r}")
        try:
            res = cls(**d)
        except TypeError as e:
            raise DataError(f"{where}: {e}") from None
        if res.status not in STATUSES:
            raise DataError(f"{where}: key 'status': {res.status!r} is not one of {STATUSES}")
        if res.data_source not in DATA_SOURCES:
            raise DataError(f"{where}: key 'data_source': {res.data_source!r} is not one of {DATA_SOURCES}")
        return res


def _finite(value: Any) -> Any:
    """NaN/inf anywhere (a metric undefined on the data, in details too) -> None: results are strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def scores_from_metrics(metrics: dict[str, float], score_keys: list[str]) -> dict[str, float]:
    """The 0-100 numbers that enter the averages (rounded to 4 decimals so JSON diffs stay readable)."""
    return {k: round(100.0 * float(metrics[k]), 4) for k in score_keys}
