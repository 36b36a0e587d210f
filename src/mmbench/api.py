"""`mmbench.evaluate`: the one entry point the CLI and users call.

    >>> import mmbench
    >>> results = mmbench.evaluate("clip-tiny", ["flickr30k"], data="synthetic", limit=32)

For every (model, task): resolve and validate configs, find (or generate) the data, skip when a valid result with the
same config hash and the same data fingerprint exists, check that the result can be written, run the task's
protocol under Lightning, and write the versioned result JSON atomically. A capability the model lacks becomes an
`n/a` result with its reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mmbench import paths
from mmbench import seeds as seeding
from mmbench.config import Registry, parse_overrides, resolved_model_dict, resolved_task_dict
from mmbench.errors import CapabilityError, ConfigError, DataError
from mmbench.lit.loggers import LoggerOptions, check_logger
from mmbench.lit.trainer import TrainerOptions, check_strategy
from mmbench.protocols import LOGS_SAMPLES, RunContext, get_protocol
from mmbench.provenance import provenance
from mmbench.results import samples, store
from mmbench.results.schema import TaskResult, scores_from_metrics
from mmbench.schema import ModelConfig, TaskConfig, result_name
from mmbench.standing import standing, stored_result

log = logging.getLogger("mmbench")
DATA_MODES = ("real", "synthetic")


def default_output(data: str) -> Path:
    """Synthetic runs default to results/synthetic/ so they can never overwrite, or pass for, a real run."""
    return Path("results") / "synthetic" if data == "synthetic" else Path("results")


def default_cache_dir() -> Path:
    return paths.cache_dir()


def evaluate(
    model: str | Iterable[str],
    tasks: str | Iterable[str] = (),
    *,
    groups: str | Iterable[str] = (),
    data: str = "real",
    data_root: str | Path | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str = "auto",
    precision: str | None = None,
    seed: int | None = None,
    seeds: Iterable[int] | None = None,
    output: str | Path | None = None,
    redo: bool = False,
    fresh: bool = False,
    overrides: Iterable[str] = (),
    num_workers: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    registry: Registry | None = None,
    on_result: Callable[[TaskResult], None] | None = None,
    log_samples: bool = False,
    logger: str | None = None,
    log_dir: str | Path | None = None,
) -> list[TaskResult]:
    """Evaluate one or more models on tasks and/or groups; returns one `TaskResult` per (model, task).

    `devices` x `num_nodes` processes run each task under Lightning's `strategy` (`auto`: DDP when more than
    one; `fsdp` shards the model; see `mmbench.lit.trainer`); under torchrun or SLURM every process calls this
    with the same arguments and only global rank 0 writes results.
    `overrides` are `--set` items (`model.KEY=VALUE`, `task.KEY=VALUE`) applied to every model / task.
    `redo` runs tasks whose result is up to date again; `fresh` also discards resumable fine-tuning state (run
    folders, a corrupt checkpoint included) so training starts from the beginning. `log_samples` also writes each
    task's per-sample predictions (`mmbench.results.samples`); an up-to-date result without them runs again.
    `seed` (default 0) runs one seed; `seeds=[0, 1, 2]` runs each and writes one result of their mean, standard
    deviation and per-seed scores (`mmbench.seeds`), with `log_samples` one samples file per seed. `logger` ("csv",
    "tensorboard", "wandb") records fine-tuning's training curves under `log_dir` (default `<output>/logs`;
    `mmbench.lit.loggers`).
    """
    models = [model] if isinstance(model, str) else list(model)
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    groups = [groups] if isinstance(groups, str) else list(groups)
    check_options(data, limit, batch_size, devices, num_workers)
    seed_list = seeding.resolve(seed, seeds)
    if logger is not None:
        check_logger(logger)
    _check_scale(num_nodes, strategy)
    registry = registry or Registry()
    output = Path(output) if output is not None else default_output(data)
    log_root = Path(log_dir) if log_dir is not None else output / "logs"
    # --cache-dir reaches every part (checkpoint downloads included) through the environment, for this call only.
    with paths.cache_override(cache_dir):
        # every name validated before any work; a spec's local weights are digested once, memoised in the cache
        model_cfgs, task_cfgs = resolve_configs(models, tasks, groups, overrides, registry)
        check_synthetic_options(task_cfgs, data)
        cache = paths.cache_dir()

        results = []
        total = len(model_cfgs) * len(task_cfgs)
        for m_i, mcfg in enumerate(model_cfgs):
            built = _ModelCache()
            for t_i, tcfg in enumerate(task_cfgs):
                step = m_i * len(task_cfgs) + t_i + 1
                state = standing(
                    mcfg, tcfg, output, data, data_root, cache, seeds=seed_list, limit=limit, precision=precision
                )
                run_info, chash, data_fp = state.run_info, state.config_hash, state.data_fingerprint
                root, source, task_seeds = state.data_root, state.data_source, state.seeds
                existing = None if redo or fresh else state.result
                if state.reason == "data changed" and not (redo or fresh):
                    log.info("%s x %s: the result was computed on other data: running again", mcfg.name, tcfg.name)
                sample_file = samples.samples_path(output, mcfg.name, result_name(tcfg))
                sample_files = (
                    [sample_file] if len(task_seeds) == 1 else [samples.per_seed(sample_file, s) for s in task_seeds]
                )
                lacking = log_samples and tcfg.protocol in LOGS_SAMPLES and any(not f.is_file() for f in sample_files)
                # Running again is the only way to get an up-to-date result's predictions (a fine-tuning run folder
                # is only re-evaluated, the probe's features come from the cache); an n/a result has none.
                if existing is not None and lacking and existing.status == "ok":
                    log.info("%s x %s: up to date, but no %s: running again to log them", mcfg.name, tcfg.name,
                             sample_file)  # fmt: skip
                    existing = None
                if existing is not None:
                    log.info("[%d/%d] %s x %s: up to date (%s), skipped", step, total, mcfg.name, tcfg.name, chash)
                    results.append(existing)
                    continue
                log.info("[%d/%d] %s x %s", step, total, mcfg.name, tcfg.name)
                # A read-only or misplaced --output must not cost the work: look before it, naming the result.
                paths.check_writable(store.result_path(output, mcfg.name, result_name(tcfg)), "result")
                if log_samples:
                    paths.check_writable(sample_file, "samples file")
                ctx = RunContext(
                    model_cfg=mcfg,
                    data_root=root,
                    data_source=source,
                    model_factory=built,
                    trainer=TrainerOptions(
                        accelerator=accelerator,
                        devices=devices,
                        num_nodes=num_nodes,
                        precision=precision,
                        progress=progress,
                        strategy=strategy,
                    ),
                    limit=limit,
                    batch_size=batch_size,
                    num_workers=_default_workers(devices) if num_workers is None else num_workers,
                    seed=task_seeds[0],
                    cache_dir=cache,
                    artifact_dir=store.artifact_dir(output, mcfg.name),
                    run_key=_run_key(chash, data_fp),
                    fresh=fresh,
                    log_samples=log_samples,
                    resolve_model=lambda name: registry.model(name, {}),  # the --set model.* are not its
                )
                if logger is not None:  # --logger: the Trainers that train log to <log dir>/<model>/<task>/seed<N>
                    ctx.trainer.logger = LoggerOptions(logger, log_root, mcfg.name, result_name(tcfg), ctx.seed, chash)
                if len(task_seeds) == 1:
                    result, is_zero = _run_one(
                        mcfg,
                        tcfg,
                        ctx,
                        run_info,
                        chash,
                        data_fp,
                        built,
                        samples_to=sample_file if log_samples else None,
                    )
                else:
                    result, is_zero = _run_seeds(
                        mcfg, tcfg, ctx, run_info, chash, data_fp, built, output, redo or fresh or lacking,
                        samples_to=sample_file if log_samples else None,
                    )  # fmt: skip
                if is_zero:
                    if not (log_samples and result.status == "ok"):
                        for stale in sample_files:
                            samples.discard_stale(stale)
                    store.write(output, result)
                results.append(result)
                if on_result is not None and is_zero:
                    on_result(result)
        return results


def check_options(data: str, limit: int | None, batch_size: int | None, devices: int, num_workers: int | None) -> None:
    if data not in DATA_MODES:
        raise ConfigError(f"--data {data!r}: expected one of {', '.join(DATA_MODES)}")
    for flag, value in (("--limit", limit), ("--batch-size", batch_size), ("--devices", devices)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: expected a positive number")
    if num_workers is not None and num_workers < 0:
        raise ConfigError(f"--num-workers {num_workers}: expected 0 or more")


def _check_scale(num_nodes: int, strategy: str) -> None:
    if num_nodes < 1:
        raise ConfigError(f"--num-nodes {num_nodes}: expected a positive number")
    check_strategy(strategy)


def check_synthetic_options(tasks: list[TaskConfig], data: str) -> None:
    """A typo in a synthetic writer's options fails before any task runs, not when its task's turn comes."""
    if data == "synthetic":
        from mmbench.data import synthetic

        for tcfg in tasks:
            synthetic.check_options(tcfg)


def resolve_configs(
    models: list[str], tasks: list[str], groups: list[str], overrides: Iterable[str], registry: Registry
) -> tuple[list[ModelConfig], list[TaskConfig]]:
    """Every model and task config of a run, `--set` overrides applied; every name is validated before any work."""
    ov = parse_overrides(list(overrides))
    task_names = registry.expand(tasks, groups)
    if not task_names:
        raise ConfigError("no task given: use --task NAME or --group NAME (see `mmbench list tasks`)")
    return [registry.model(m, ov["model"]) for m in models], [registry.task(t, ov["task"]) for t in task_names]


def _run_seeds(
    mcfg: ModelConfig,
    tcfg: TaskConfig,
    ctx: RunContext,
    run_info: dict,
    chash: str,
    data_fp: str | None,
    built: _ModelCache,
    output: Path,
    rerun: bool,
    samples_to: Path | None = None,
) -> tuple[TaskResult, bool]:
    """Each seed exactly as its single-seed run (config hash, run folder, logger folder), then one result. With
    `samples_to` each seed that runs logs its samples beside it, as `<name>.seed<N>.jsonl`."""

    def run_seed(seed: int, info: dict, seed_hash: str) -> tuple[TaskResult, bool]:
        logs = ctx.trainer.logger.for_seed(seed, seed_hash) if ctx.trainer.logger is not None else None
        trainer = dataclasses.replace(ctx.trainer, logger=logs)
        seed_ctx = dataclasses.replace(ctx, seed=seed, run_key=_run_key(seed_hash, data_fp), trainer=trainer)
        seed_samples = samples.per_seed(samples_to, seed) if samples_to is not None else None
        return _run_one(mcfg, tcfg, seed_ctx, info, seed_hash, data_fp, built, samples_to=seed_samples)

    def earlier(seed_hash: str) -> TaskResult | None:
        return stored_result(store.result_path(output, mcfg.name, result_name(tcfg)), seed_hash, data_fp)[0]

    runner = seeding.SeedRuns(output, mcfg, tcfg, data_fp, rerun, _is_global_zero())
    return runner.run(run_info, chash, run_seed, earlier)


def _run_key(chash: str, data_fp: str | None) -> str:
    """Names resumable state (fine-tuning run folders): the config and the data, so that training on repaired
    data starts afresh instead of resuming, or re-evaluating, weights trained on the old data."""
    if data_fp is None:
        return chash
    return "sha256:" + hashlib.sha256(f"{chash}/{data_fp}".encode()).hexdigest()[:16]


def _run_one(
    mcfg: ModelConfig,
    tcfg: TaskConfig,
    ctx: RunContext,
    run_info: dict,
    chash: str,
    data_fp: str | None,
    built: _ModelCache,
    samples_to: Path | None = None,
) -> tuple[TaskResult, bool]:
    import lightning as L
    import torch

    L.seed_everything(ctx.seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    common = dict(
        model=mcfg.name,
        task=tcfg.name,
        domain=tcfg.domain,
        protocol=tcfg.protocol,
        primary=tcfg.primary,
        data_source=ctx.data_source,
        limit=ctx.limit,
        config={"model": resolved_model_dict(mcfg), "task": resolved_task_dict(tcfg), "run": run_info},
        config_hash=chash,
        random_init=mcfg.random_init,
        data_fingerprint=data_fp,
    )
    try:
        out = get_protocol(tcfg.protocol)(tcfg, ctx)
    except CapabilityError as e:
        log.warning("%s x %s: n/a (%s)", mcfg.name, tcfg.name, e)
        prov = provenance(ctx, time.perf_counter() - start, built.build_seconds)
        # An in-context n/a still says for how many shots, as its file name does.
        details = {}
        if tcfg.protocol == "incontext":
            details = {"shots": tcfg.incontext.shots, "demonstrations": tcfg.incontext.demonstrations}
        elif tcfg.protocol == "retrieval" and tcfg.retrieval.rerank_k:
            details = {"rerank_k": tcfg.retrieval.rerank_k}
        result = TaskResult(
            status="n/a", reason=str(e), metrics={}, scores={}, n_samples=0, provenance=prov, details=details, **common
        )
        return result, _is_global_zero()
    missing = [m for m in tcfg.metrics if m not in out.metrics]
    if missing:
        raise ConfigError(f"task {tcfg.name!r}: protocol {tcfg.protocol!r} reported no metric {missing[0]!r}")
    undefined = [k for k in tcfg.scores if not math.isfinite(out.metrics[k])]
    if undefined:
        raise DataError(f"task {tcfg.name!r}: score {undefined[0]!r} is undefined (NaN) on this data")
    if samples_to is not None and out.is_global_zero:  # before the result: a result logged with samples has them
        if out.samples is None:
            log.warning("%s: the %s protocol logs no per-sample predictions", tcfg.name, tcfg.protocol)
        else:
            samples.write(samples_to, out.samples)
    result = TaskResult(
        status="ok",
        metrics={k: float(v) for k, v in out.metrics.items()},  # NaN (undefined on the data) is written as null
        scores=scores_from_metrics(out.metrics, tcfg.scores),
        n_samples=out.n_samples,
        details=out.details,
        provenance=provenance(ctx, time.perf_counter() - start, built.build_seconds),
        **common,
    )
    return result, out.is_global_zero


class _ModelCache:
    """Builds a model once per evaluate() call and model; `fresh=True` gives an untouched copy (fine-tuning)."""

    def __init__(self) -> None:
        self.model: Any = None
        self.build_seconds = 0.0

    def __call__(self, cfg: ModelConfig, fresh: bool = False) -> Any:
        from mmbench.models import build_model

        if fresh:
            return build_model(cfg)
        if self.model is None:
            self.model = build_model(cfg)
            self.build_seconds = self.model.build_seconds
        return self.model


def _default_workers(devices: int) -> int:
    return max(0, min(4, (os.cpu_count() or 1) // max(1, devices) - 1))


def _is_global_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
