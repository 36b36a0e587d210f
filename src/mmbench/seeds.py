"""Several seeds, one result (`--seeds 0,1,2`): which seeds a task runs, their config identity, the per-seed results
kept while a run goes on, and the combined result.

Where a seed moves the numbers (`ctx.seed`): fine-tuning draws its head's initial weights, the training data order
and the dropout masks from it; the linear probe draws its validation hold-out from it (`holdout_seed + seed`) when
the data hold no validation split. The rest have nothing random to move (retrieval, zero-shot classification, the
probe on a validation split; its L-BFGS sweep is deterministic) or their own trials (in-context: `incontext.trials`
seeded from `incontext.seed`): those run once, with the first seed and exactly a single-seed run's config hash, so
a result already there counts and nothing is computed three times over to report a spread of 0.

Config identity: a single seed keeps the run block `{"seed", "limit", "data_source", "precision"}` unchanged (the
committed results stay up to date); several seeds write `{"seeds": [...], ...}` instead, so a 3-seed result never
passes for a 1-seed one, nor the reverse. Each seed's run has exactly the single-seed identity of that seed: its
fine-tuning run folder and its result are the ones `--seed N` makes, and are reused both ways.

Crash safety: each finished seed's result is written, atomically, to `<output>/seeds/<model>/<task>.seed<N>.json`
(outside `runs/`, whose every JSON is a result) and reused when the run is repeated with the same per-seed config
hash and data; a seed whose result is already the main `runs/` result (an earlier `--seed N`) is reused too.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmbench.config import config_hash
from mmbench.errors import ConfigError, DataError
from mmbench.paths import atomic_write_text, model_folder
from mmbench.results import store
from mmbench.results.schema import TaskResult
from mmbench.schema import ModelConfig, TaskConfig, result_name

log = logging.getLogger("mmbench")

SEEDED_PROTOCOLS = ("finetune", "linear_probe")


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from None


def resolve(seed: int | None, seeds: Iterable[int] | None) -> list[int]:
    """The seeds to run, sorted (the result is the same whatever order they are given in); `seed` alone is one."""
    if seeds is None:
        return [0 if seed is None else seed]
    if seed is not None:
        raise ConfigError("--seed and --seeds: give one of them (--seed N runs one seed, --seeds 0,1,2 several)")
    given = list(seeds)
    if not given:
        raise ConfigError("--seeds: no seed given (e.g. --seeds 0,1,2)")
    for s in given:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"--seeds: {s!r} is not a seed (an integer >= 0)")
    out = sorted(given)
    if len(set(out)) != len(out):
        raise ConfigError(f"--seeds {','.join(map(str, out))}: a seed is given twice")
    return out


def run_info(seeds: list[int], limit: int | None, data_source: str, precision: str | None) -> dict[str, Any]:
    """The run block of a result's config (part of its hash): a single seed's is exactly what it has always been."""
    first = {"seed": seeds[0]} if len(seeds) == 1 else {"seeds": list(seeds)}
    return {**first, "limit": limit, "data_source": data_source, "precision": precision}


def seed_run_info(info: dict[str, Any], seed: int) -> dict[str, Any]:
    """The single-seed run block of one seed of a several-seed run."""
    return run_info([seed], info["limit"], info["data_source"], info["precision"])


def not_applicable(task: TaskConfig, root: Path) -> str | None:
    """Why the seeds cannot move this task's numbers (it then runs once); None when they can."""
    if task.protocol == "linear_probe":
        from mmbench.data import open_reader
        from mmbench.protocols.linear_probe import validation_split

        try:
            split = validation_split(open_reader(task, root), task.linear_probe.val_split)
        except DataError:
            return None  # the first seed's run reports what is wrong with the data
        return f"the linear probe validates on the {split!r} split: nothing random" if split else None
    if task.protocol in SEEDED_PROTOCOLS:
        return None
    if task.protocol == "incontext":
        return "in-context evaluation runs its own trials (task.incontext.trials, seeded by task.incontext.seed)"
    return f"the {task.protocol} protocol draws no random numbers"


def task_seeds(task: TaskConfig, root: Path, seeds: list[int]) -> list[int]:
    """The seeds `task` runs: all of them where a seed moves its numbers, else the first one alone."""
    if len(seeds) == 1:
        return seeds
    reason = not_applicable(task, root)
    if reason is None:
        return seeds
    log.info("%s: one run (seed %d) for --seeds %s: %s", task.name, seeds[0], ",".join(map(str, seeds)), reason)
    return seeds[:1]


# (seed, its single-seed run block, its config hash) -> (result, whether this process writes results)
RunSeed = Callable[[int, dict[str, Any], str], tuple[TaskResult, bool]]


@dataclass
class SeedRuns:
    """One (model, task) run once per seed, combined into one result. A finished seed's result is reused, unless
    `rerun` (--redo, --fresh), from `<output>/seeds/` or, for an earlier `--seed N`, from `runs/` (`earlier`, given
    the seed's config hash, returns that result when it is up to date)."""

    output: Path
    model: ModelConfig
    task: TaskConfig
    data_fp: str | None
    rerun: bool
    is_global_zero: bool

    def run(
        self, info: dict[str, Any], chash: str, run_seed: RunSeed, earlier: Callable[[str], TaskResult | None]
    ) -> tuple[TaskResult, bool]:
        name, task = result_name(self.task), self.task
        runs, reused, is_zero = [], [], self.is_global_zero
        for seed in info["seeds"]:
            seed_info = seed_run_info(info, seed)
            seed_hash = config_hash(self.model, task, seed_info)
            res = None if self.rerun else self._stored(name, seed, seed_hash, earlier)
            if res is not None:
                reused.append(seed)
            else:
                res, is_zero = run_seed(seed, seed_info, seed_hash)
                if res.status != "ok":  # n/a: no seed changes what the model cannot do
                    return replace(res, config={**res.config, "run": info}, config_hash=chash), is_zero
                if is_zero:
                    save_seed_run(self.output, name, res)
            value = res.metrics.get(task.primary)
            shown = "undefined" if value is None else f"{value:.4f}"
            kept = " (kept from before)" if seed in reused else ""
            log.info("%s x %s seed %d: %s = %s%s", self.model.name, task.name, seed, task.primary, shown, kept)
            runs.append(res)
        result = combine(runs, info, chash, reused)
        spread = ", ".join(f"{k} {v:.2f} ± {result.scores_std[k]:.2f}" for k, v in result.scores.items())
        log.info("%s x %s over seeds %s: %s", self.model.name, task.name, ",".join(map(str, info["seeds"])), spread)
        return result, is_zero

    def _stored(
        self, name: str, seed: int, seed_hash: str, earlier: Callable[[str], TaskResult | None]
    ) -> TaskResult | None:
        res = load_seed_run(self.output, self.model.name, name, seed, seed_hash, self.data_fp)
        if res is None:
            res = earlier(seed_hash)
            if res is None or res.status != "ok":
                return None
            if self.is_global_zero:  # the combined result is about to replace it in runs/
                save_seed_run(self.output, name, res)
        return res


# ---- per-seed results kept while a several-seed run goes on --------------------------------------------------------
def seed_path(output: Path, model: str, name: str, seed: int) -> Path:
    return Path(output) / "seeds" / model_folder(model) / f"{name}.seed{seed}.json"


def load_seed_run(output: Path, model: str, name: str, seed: int, chash: str, data_fp: str | None) -> TaskResult | None:
    """A finished seed's result if it still stands: valid, same per-seed config hash, same data."""
    path = seed_path(output, model, name, seed)
    if not path.is_file():
        return None
    try:
        res = store.read(path)
    except DataError as e:
        log.warning("%s; running that seed again", e)
        return None
    ok = res.status == "ok" and res.config_hash == chash and data_fp is not None and res.data_fingerprint == data_fp
    return res if ok else None


def save_seed_run(output: Path, name: str, result: TaskResult) -> Path:
    """Atomically, as `store.write` writes results, so a crash never leaves half a seed behind."""
    text = json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(seed_path(output, result.model, name, result.config["run"]["seed"]), text)


# ---- the combined result --------------------------------------------------------------------------------------
def combine(runs: list[TaskResult], info: dict[str, Any], chash: str, reused: list[int]) -> TaskResult:
    """One result from the seeds' results: means in `scores`/`metrics`, sample standard deviations (n-1) in
    `scores_std`, each seed in `seed_runs`, each seed's details under `details.per_seed`; the cost is the seeds'
    total (wall time) and worst (peak memory)."""
    first = runs[0]
    seeds = [r.config["run"]["seed"] for r in runs]
    scores = {k: [r.scores[k] for r in runs] for k in first.scores}
    provenance = {
        **runs[-1].provenance,
        "seed": None,
        "seeds": seeds,
        "seeds_reused": reused,
        "wall_seconds": round(sum(r.provenance["wall_seconds"] for r in runs), 3),
        "model_build_seconds": round(sum(r.provenance.get("model_build_seconds") or 0.0 for r in runs), 3),
        "peak_rss_mb": _max(r.provenance.get("peak_rss_mb") for r in runs),
        "peak_gpu_mb": _max(r.provenance.get("peak_gpu_mb") for r in runs),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return TaskResult(
        model=first.model,
        task=first.task,
        domain=first.domain,
        protocol=first.protocol,
        status="ok",
        metrics={k: mean_metric([r.metrics.get(k) for r in runs]) for k in first.metrics},
        scores={k: round(statistics.fmean(v), 4) for k, v in scores.items()},
        scores_std={k: round(statistics.stdev(v), 4) for k, v in scores.items()},
        seed_runs=[
            {"seed": s, "scores": r.scores, "metrics": r.metrics, "n_samples": r.n_samples} for s, r in zip(seeds, runs)
        ],
        primary=first.primary,
        n_samples=first.n_samples,
        data_source=first.data_source,
        limit=first.limit,
        config={**first.config, "run": info},
        config_hash=chash,
        provenance=provenance,
        details={"seeds": seeds, "per_seed": [{"seed": s, **r.details} for s, r in zip(seeds, runs)]},
        random_init=first.random_init,
        data_fingerprint=first.data_fingerprint,
    )


def mean_metric(values: list[float | None]) -> float | None:
    """The mean over seeds; None (undefined) when any seed's is."""
    if any(v is None or math.isnan(v) for v in values):
        return None
    return statistics.fmean(values)


def _max(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None
