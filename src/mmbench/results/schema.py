"""The result JSON, one per (model, task). Bump SCHEMA_VERSION on any change readers must know about.

`metrics` hold every metric on its natural scale (fractions for accuracies and recalls, correlations in [-1, 1]);
`scores` hold the numbers that enter the domain averages, on the 0-100 scale (100 x metric), as the paper reports.
A task the model cannot do is written with `status: "n/a"`, a `reason`, and no scores (it counts 0 in averages).
`data_fingerprint` identifies the data the result was computed on (file names, sizes and modification times of the
splits read, see `mmbench.standing`): a result is up to date only for the same config hash and the same fingerprint.

Reading validates every field's type (a hand-edited or truncated-then-repaired file must not pass for a result),
so a stale or damaged result is re-run by `mmbench run` and named by `mmbench table`.

A run over several seeds (`--seeds 0,1,2`) is still one result: `scores` and `metrics` hold the means over the
seeds, `scores_std` the sample standard deviation (n-1) of each score, and `seed_runs` one entry per seed
(`{"seed", "scores", "metrics", "n_samples"}`); both stay empty for a single-seed run.

Versions: 2 added `data_fingerprint`; 3 added `seed_runs` and `scores_std`. Older files are still read (a version-1
file as made on unknown data, so never up to date).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
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
    data_fingerprint: str | None = None  # the data read (None: unknown, e.g. written by schema version 1)
    # Several seeds: one entry per seed ({"seed", "scores", "metrics", "n_samples"}); `scores` are their means and
    # `scores_std` the sample standard deviations. Both empty for a single-seed run.
    seed_runs: list[dict[str, Any]] = field(default_factory=list)
    scores_std: dict[str, float] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def is_reference_grade(self) -> bool:
        """May this result appear in the real leaderboard? Real data, full split, real weights."""
        return self.data_source == "real" and self.limit is None and not self.random_init

    def to_json(self) -> dict[str, Any]:
        d = _finite(asdict(self))
        d.pop("schema_version")  # whatever version it was read as, it is written by this code
        return {"schema_version": SCHEMA_VERSION, **d}

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "result") -> TaskResult:
        """Validate a parsed result file; every problem is a `DataError` naming `where` and the key."""
        from mmbench.errors import DataError

        version = d.get("schema_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise DataError(f"{where}: schema_version {version!r} is not {SCHEMA_VERSION} (re-run with --redo)")
        known = set(cls.__dataclass_fields__) - _ADDED_AFTER.get(version, set())
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"{where}: unknown key {unknown[0]!r}")
        fields = cls.__dataclass_fields__.values()
        missing = [f.name for f in fields if f.name not in d and f.default is f.default_factory is MISSING]
        if missing:
            raise DataError(f"{where}: missing key {missing[0]!r}")
        problem = _problem(d)
        if problem:
            raise DataError(f"{where}: {problem}")
        return cls(**d)


# Keys a file of an older schema version cannot hold.
_ADDED_AFTER: dict[int, set[str]] = {1: {"data_fingerprint", "seed_runs", "scores_std"}, 2: {"seed_runs", "scores_std"}}


def _is_seed_run(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and set(v) == {"seed", "scores", "metrics", "n_samples"}
        and isinstance(v["seed"], int)
        and not isinstance(v["seed"], bool)
        and isinstance(v["scores"], dict)
        and all(_is_number(x) and math.isfinite(x) for x in v["scores"].values())
        and isinstance(v["metrics"], dict)
        and all(x is None or _is_number(x) for x in v["metrics"].values())
        and _is_count(v["n_samples"])
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_str_or_none(v: Any) -> bool:
    return v is None or isinstance(v, str)


# What each key must hold (JSON types): (check, what the message says it should be).
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (lambda v: isinstance(v, str) and v != "", "a model name"),
    "task": (lambda v: isinstance(v, str) and v != "", "a task name"),
    "domain": (lambda v: isinstance(v, str), "a string"),
    "protocol": (lambda v: isinstance(v, str), "a string"),
    "status": (lambda v: v in STATUSES, f"one of {', '.join(STATUSES)}"),
    "metrics": (lambda v: isinstance(v, dict), "an object"),
    "scores": (lambda v: isinstance(v, dict), "an object"),
    "primary": (lambda v: isinstance(v, str), "a string"),
    "n_samples": (_is_count, "a count (integer >= 0)"),
    "data_source": (lambda v: v in DATA_SOURCES, f"one of {', '.join(DATA_SOURCES)}"),
    "limit": (lambda v: v is None or (_is_count(v) and v > 0), "null or a positive integer"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    "config_hash": (lambda v: isinstance(v, str) and v != "", "a hash string"),
    "provenance": (lambda v: isinstance(v, dict), "an object"),
    "reason": (_is_str_or_none, "null or a string"),
    "details": (lambda v: isinstance(v, dict), "an object"),
    "random_init": (lambda v: isinstance(v, bool), "true or false"),
    "data_fingerprint": (_is_str_or_none, "null or a string"),
    "seed_runs": (
        lambda v: isinstance(v, list) and all(_is_seed_run(r) for r in v),
        "a list of {seed, scores, metrics, n_samples}",
    ),
    "scores_std": (
        lambda v: isinstance(v, dict) and all(_is_number(x) and math.isfinite(x) and x >= 0 for x in v.values()),
        "an object of finite numbers >= 0",
    ),
}


def _problem(d: dict[str, Any]) -> str | None:
    """The first thing wrong with a parsed result, as "key 'x.y': <value> is not <what>"; None when valid."""
    for key, (ok, what) in _CHECKS.items():
        if key in d and not ok(d[key]):
            return f"key {key!r}: {d[key]!r:.60} is not {what}"
    for key, value in d["metrics"].items():
        if value is not None and not _is_number(value):
            return f"key 'metrics.{key}': {value!r:.60} is not a number or null"
    for key, value in d["scores"].items():
        if not _is_number(value) or not math.isfinite(value):
            return f"key 'scores.{key}': {value!r:.60} is not a finite number"
    wall = d["provenance"].get("wall_seconds")
    if not _is_number(wall):
        return f"key 'provenance.wall_seconds': {wall!r:.60} is not a number"
    unknown_std = sorted(set(d.get("scores_std", {})) - set(d["scores"]))
    if unknown_std:
        return f"key 'scores_std.{unknown_std[0]}': not among its scores"
    if d["status"] == "ok":
        if d["primary"] not in d["metrics"]:
            return f"key 'primary': {d['primary']!r} is not among its metrics"
    elif d["scores"]:
        return f"key 'scores': an {d['status']!r} result has no scores"
    return None


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
