"""Results as a pandas DataFrame: one row per (model, result, score), for notebooks, the pictures and the cost table.

    frame = load("results/synthetic")        # a results folder (holding runs/), a runs folder or one result JSON
    frame[frame.status == "ok"].pivot_table(index="task", columns="model", values="value")
    averages = domain_averages(frame, layout)  # the paper's averaging rule on the frame: column -> domain averages

Columns (`COLUMNS`, in this order): `model`, `task`, `result` (the file's name: a task plus `-<k>shot` for in-context
or `-itm<k>` for re-ranked retrieval), `domain`, `protocol`, `score` (the score key) and `value` (0-100; NaN for an
`n/a` result, which has one row with no score so that averages can count it 0 as the paper does), `std` (sample
standard deviation over seeds or in-context trials; NaN with one), `n_seeds`, `seeds`, `status`, `reason`,
`primary`, `data_source`, `limit`, `random_init`, `reference` (reference-grade and in the real runs folder: the
leaderboard's first table), `column` (the leaderboard column it lands in), `n` (samples scored), `seed`, `shots`,
`demonstrations`, `config_hash`, `data_fingerprint`, `features_cached` (True when any split's features or
class embeddings came from the cache, so its wall time is not an extraction time; None: not a feature
protocol), then provenance: `wall_seconds`, `peak_rss_mb`, `peak_gpu_mb`,
`device`, `n_devices`, `precision`, `finished_at`, `mmbench` (the writer's version), `schema_version`, and `file`.

pandas is imported only when a frame is built, so `import mmbench.results` stays cheap.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench.errors import DataError
from mmbench.results import store
from mmbench.results.schema import TaskResult

if TYPE_CHECKING:
    import pandas as pd

    from mmbench.results.layout import Layout

COLUMNS = (
    "model",
    "task",
    "result",
    "domain",
    "protocol",
    "score",
    "value",
    "std",
    "n_seeds",
    "seeds",
    "status",
    "reason",
    "primary",
    "data_source",
    "limit",
    "random_init",
    "reference",
    "column",
    "n",
    "seed",
    "shots",
    "demonstrations",
    "config_hash",
    "data_fingerprint",
    "features_cached",
    "wall_seconds",
    "peak_rss_mb",
    "peak_gpu_mb",
    "device",
    "n_devices",
    "precision",
    "finished_at",
    "mmbench",
    "schema_version",
    "file",
)
_INTS = ("n_seeds", "limit", "n", "seed", "shots", "n_devices", "schema_version")  # nullable integers (Int64)
_FLOATS = ("value", "std", "wall_seconds", "peak_rss_mb", "peak_gpu_mb")
# provenance.device: "cpu x2", "NVIDIA H200 x8", "NVIDIA H200 x8, 4 nodes" (devices per node)
_DEVICE = re.compile(r"^(?P<name>.*\S)\s+x(?P<count>\d+)(?:, (?P<nodes>\d+) nodes)?$")
SECTION_PROTOCOLS = ("zeroshot", "incontext")  # their own leaderboard sections: never in Table 4's averages


def result_files(path: Path) -> list[tuple[Path, bool]]:
    """(file, whether it may be reference-grade) of every result `path` holds: a results folder (its `runs/`, then
    `synthetic/runs/` whose results never are, as `mmbench table` reads them), a runs folder (`<model>/<name>.json`)
    or one result file; sorted by file within each folder."""
    path = Path(path)
    if path.is_file():
        return [(path, True)]
    if not path.is_dir():
        raise DataError(f"{path}: no such results folder or result file")
    if (path / "runs").is_dir() or (path / "synthetic" / "runs").is_dir():
        return folder_files(path)
    return [(p, True) for p in sorted(path.glob("*/*.json"))]


def folder_files(results_dir: Path) -> list[tuple[Path, bool]]:
    """(file, whether it lies in the real runs folder) of `<results_dir>/runs/*/*.json`, then
    `<results_dir>/synthetic/runs/*/*.json` (where synthetic runs go by default), each sorted by file."""
    roots = (Path(results_dir), Path(results_dir) / "synthetic")
    return [(p, root == roots[0]) for root in roots for p in sorted((root / "runs").glob("*/*.json"))]


def header_of(result: TaskResult, reference: bool) -> str:
    """The leaderboard column a result lands in: the model for a reference result, else e.g. "clip-tiny (synthetic,
    random init)", so that a smoke-test number never shares a column with a real one."""
    if reference:
        return result.model
    parts = [result.data_source]
    parts += [f"limit {result.limit}"] if result.limit is not None else []
    parts += ["random init"] if result.random_init else []
    return f"{result.model} ({', '.join(parts)})"


def n_devices(device: Any) -> int | None:
    """How many devices a run used, from `provenance.device` ("cpu x2", "NVIDIA H200 x8", "... x8, 4 nodes": 32);
    None when unrecorded."""
    if not isinstance(device, str):
        return None
    m = _DEVICE.match(device)
    return int(m["count"]) * int(m["nodes"] or 1) if m else 1


def load(path: str | Path) -> pd.DataFrame:
    """Every result under `path` as one DataFrame (see the module docstring for the columns); a malformed result
    file is a `DataError` naming it, as everywhere else."""
    return frame_of([(file, store.read(file), primary) for file, primary in result_files(Path(path))])


def frame_of(results: list[tuple[Path, TaskResult, bool]]) -> pd.DataFrame:
    """The frame of results already read: (file, result, whether it lies where a reference result may)."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for file, res, primary in results:
        rows += rows_of(res, file, reference=primary)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for name in _INTS:
        frame[name] = frame[name].astype("Int64")
    for name in _FLOATS:
        frame[name] = frame[name].astype("float64")
    for name in ("random_init", "reference"):
        frame[name] = frame[name].astype(bool)
    frame["features_cached"] = frame["features_cached"].astype("boolean")
    return frame


def rows_of(res: TaskResult, file: Path, reference: bool = False) -> list[dict[str, Any]]:
    """The frame's rows of one result: one per score, or one with no score for an n/a result (or one without
    scores). `reference` only when the file lies in the real runs folder (the leaderboard's rule)."""
    reference = reference and res.is_reference_grade
    prov = res.provenance
    seeds, stds = _spread(res)
    base = {
        "model": res.model,
        "task": res.task,
        "result": store.name_of(res),
        "domain": res.domain,
        "protocol": res.protocol,
        "status": res.status,
        "reason": res.reason,
        "primary": res.primary,
        "data_source": res.data_source,
        "limit": res.limit,
        "random_init": res.random_init,
        "reference": reference,
        "column": header_of(res, reference),
        "n": res.n_samples,
        "n_seeds": max(len(seeds), 1),
        "seeds": ",".join(str(s) for s in seeds) if seeds else _str(prov.get("seed")),
        "seed": _int(prov.get("seed")),
        "shots": _int(res.details.get("shots")) if res.protocol == "incontext" else None,
        "demonstrations": res.details.get("demonstrations") if res.protocol == "incontext" else None,
        "config_hash": res.config_hash,
        "data_fingerprint": res.data_fingerprint,
        "features_cached": _cached(res.details),
        "wall_seconds": prov.get("wall_seconds"),
        "peak_rss_mb": _float(prov.get("peak_rss_mb")),
        "peak_gpu_mb": _float(prov.get("peak_gpu_mb")),
        "device": prov.get("device"),
        "n_devices": n_devices(prov.get("device")),
        "precision": prov.get("precision"),
        "finished_at": prov.get("finished_at"),
        "mmbench": prov.get("mmbench"),
        "schema_version": res.schema_version,
        "file": str(file),
    }
    if res.status != "ok" or not res.scores:
        return [{**base, "score": None, "value": math.nan, "std": math.nan}]
    return [
        {**base, "score": key, "value": float(value), "std": stds.get(key, math.nan) if len(seeds) > 1 else math.nan}
        for key, value in res.scores.items()
    ]


def _spread(res: TaskResult) -> tuple[list[int], dict[str, float]]:
    """(seeds, score -> std) of a result over several seeds (`seed_runs`, `scores_std`) or in-context trials
    (`details.trials`, `details.std`, which predate the seed fields); ([], {}) for a single run."""
    if res.seed_runs:
        return [r["seed"] for r in res.seed_runs], dict(res.scores_std)
    trials = res.details.get("trials") if res.protocol == "incontext" else None
    if isinstance(trials, list) and trials:
        std = res.details.get("std")
        seeds = [t.get("seed") if isinstance(t, dict) else None for t in trials]
        return [s for s in seeds if isinstance(s, int)] or list(range(len(trials))), (
            {k: float(v) for k, v in std.items() if isinstance(v, int | float)} if isinstance(std, dict) else {}
        )
    return [], {}


def _cached(details: dict[str, Any]) -> bool | None:
    """Did any split's features come from the feature cache (`details.feature_cache` of the probe, `details.cache`
    of zero-shot: split -> "hit" | "miss" | ...)? None when the result records no cache."""
    caches = [c for c in (details.get("feature_cache"), details.get("cache")) if isinstance(c, dict)]
    return any(v == "hit" for c in caches for v in c.values()) if caches else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _float(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def _str(v: Any) -> str:
    return "" if v is None else str(v)


def table4(frame: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """The Table-4 grid of the frame: a row per layout row (index: domain, task, score), a column per leaderboard
    column; an `n/a` result fills its task's rows with 0 (the paper's rule), a result not run leaves NaN. Zero-shot,
    in-context and re-ranked results are left out, as the leaderboard leaves them out of Table 4."""
    import pandas as pd

    t4 = frame[~frame.protocol.isin(SECTION_PROTOCOLS) & (frame.result == frame.task)]
    index = pd.MultiIndex.from_tuples(
        [(r.domain, r.task, r.score) for r in layout.rows], names=["domain", "task", "score"]
    )
    ok = t4[t4.status == "ok"].pivot_table(index=["task", "score"], columns="column", values="value", aggfunc="first")
    grid = ok.reindex(index.droplevel("domain")).set_axis(index)
    grid = grid.reindex(columns=sorted(set(t4.column)))
    for column, task in t4[t4.status != "ok"][["column", "task"]].itertuples(index=False):
        grid.loc[grid.index.get_level_values("task") == task, column] = 0.0
    return grid


def domain_averages(frame: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """The paper's averaging rule on the frame (`table4`): per column, each domain's mean over its rows, NaN when any
    row was not run, and `macro` the mean of the domain averages (NaN when any is NaN). Index: column; columns: the
    layout's domains, then macro. The leaderboard computes the same numbers from the result files (tests compare)."""
    grid = table4(frame, layout)
    by_domain = grid.groupby(level="domain", sort=False).agg(lambda s: s.mean(skipna=False))
    out = by_domain.reindex([d.name for d in layout.domains]).T
    out["macro"] = out.mean(axis=1, skipna=False)
    out.columns.name = None
    return out
