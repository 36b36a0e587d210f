"""Linear probe (CLIP appendix A.3; FLAVA's 22 vision tasks): frozen image features, multinomial logistic
regression with L-BFGS, L2 strength swept on val, refit on train+val, test top-1 and mean per-class accuracy.

Validation: the task's official split (`linear_probe.val_split`) when the data contain it under any of its usual
spellings (`val`, `valid`, `validation`: CLIP_benchmark's Country211 says `valid`), otherwise a seeded hold-out of
train -- many published `clip-benchmark/wds_*` sets carry only train and test, and a run never stops over a split
the published files lack. `details["validation"]` records which happened. The hold-out's seed is
`linear_probe.holdout_seed` plus the run's seed, so `--seeds 0,1,2` measures how much the choice of hold-out moves
the score (seed 0 draws the hold-out the task names).

Selection: the sweep's scores are accuracies on the validation samples, so they move in steps of one sample, and a
prediction whose top-2 logits nearly tie can flip on float rounding alone (another CPU kernel: AVX-512 vs AVX2).
Scores within one validation sample's largest effect on the selection metric count as tied, and ties go to the
stronger regularisation (`logreg.sweep_l2`); `details["selection"]` records the tolerance, the tied candidates and
the pick. Features come from `protocols.features` (cached by content; a cache hit never builds the model); the
classifier is `protocols.logreg` (on the GPU when there is one).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from mmbench.data import Reader, open_reader
from mmbench.errors import ConfigError, DataError
from mmbench.metrics.accuracy import METRICS, mean_per_class, top1
from mmbench.models.base import Capability
from mmbench.protocols.base import ProtocolOutput, RunContext
from mmbench.protocols.features import SplitFeatures, load_or_extract
from mmbench.protocols.logreg import LogRegFit, SweepResult, fit_logreg, sweep_l2
from mmbench.protocols.sample_rows import classification_rows
from mmbench.schema import LinearProbeParams, TaskConfig

log = logging.getLogger("mmbench")

VAL_SPELLINGS = ("val", "valid", "validation")  # one validation split, as the published layouts name it
# Validation scores within this many samples' effect on the metric count as tied. Why one: fitting the same
# features on every strength of the 1/8-decade grid with ATen's default, AVX2 and AVX-512 kernels, the validation
# predictions differed in at most one sample per strength on 24 and 100 validation samples, and at most two (once)
# on 300 -- all at l2 <= 10^-2.75, where the objective is nearly flat. One sample absorbs the common case without
# blurring real differences on large validation sets (on 10,000 samples it is 0.01 points).
TIE_SAMPLES = 1


def validation_split(reader: Reader, requested: str | None) -> str | None:
    """The split the data hold for `requested` (itself, or another spelling of a validation split); None when
    there is none, and the caller holds out part of train."""
    if not requested:
        return None
    names = [requested, *(s for s in VAL_SPELLINGS if s != requested)] if requested in VAL_SPELLINGS else [requested]
    return next((name for name in names if reader.has_split(name)), None)


def sample_effect(metric: str, target: Tensor) -> float:
    """The most that changing one prediction can move `metric` on these labels: 1/n for top-1; for mean per-class
    accuracy 1/(C * n_c), C present classes and n_c the smallest class's count (one sample is 1/n_c of its recall)."""
    if metric == "top1":
        return 1.0 / len(target)
    if metric == "mean_per_class":
        counts = torch.bincount(target)
        counts = counts[counts > 0]
        return 1.0 / (len(counts) * int(counts.min()))
    raise ConfigError(f"no per-sample resolution for metric {metric!r}")


def holdout(train: SplitFeatures, fraction: float, seed: int) -> tuple[SplitFeatures, SplitFeatures]:
    """A seeded random `fraction` of train as val (at least one sample each side), both kept in index order."""
    n = len(train.labels)
    if n < 2 or not 0 < fraction < 1:
        raise DataError(f"cannot hold out {fraction} of {n} training samples as validation")
    n_val = min(max(1, round(fraction * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values

    def take(idx: Tensor) -> SplitFeatures:
        return SplitFeatures(train.features[idx], train.labels[idx])

    return take(train_idx), take(val_idx)


def solver_device(ctx: RunContext) -> torch.device:
    if torch.cuda.is_available() and ctx.trainer.accelerator in ("auto", "gpu", "cuda"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _validation(reader: Reader, task: TaskConfig, seed: int) -> tuple[str | None, dict[str, Any]]:
    """(the validation split to read or None, the record of what happened). A hold-out is drawn with
    `holdout_seed + seed`: the run's seed moves it (`--seeds`), and seed 0 keeps the task's own."""
    params = task.linear_probe
    split = validation_split(reader, params.val_split)
    if split is not None:
        return split, {"source": "split", "split": split, "requested": params.val_split}
    if params.val_split:
        spellings = "', '".join(dict.fromkeys([params.val_split, *VAL_SPELLINGS]))
        log.warning(
            "task %r: %s has no '%s' split; selecting the L2 strength on a hold-out of %r instead",
            task.name,
            reader.root,
            spellings if params.val_split in VAL_SPELLINGS else params.val_split,
            params.train_split,
        )
    record = {"source": "holdout", "of": params.train_split, "fraction": params.holdout_fraction}
    return None, {**record, "seed": params.holdout_seed + seed, "requested": params.val_split}


def _val_source(validation: dict[str, Any]) -> str:
    """The one-line reading of `validation`, as results have always carried it."""
    if validation["source"] == "split":
        return f"split {validation['split']!r}"
    text = f"hold-out {validation['fraction']:g} of {validation['of']!r} (seed {validation['seed']})"
    return text + (f"; no {validation['requested']!r} split in the data" if validation["requested"] else "")


def run(task: TaskConfig, ctx: RunContext) -> ProtocolOutput:
    params = task.linear_probe
    ctx.require(Capability.IMAGE, "the linear probe")
    if task.primary not in METRICS:
        raise ConfigError(f"task {task.name!r}: key 'primary': the linear probe selects on {sorted(METRICS)}")
    reader = open_reader(task, ctx.data_root)
    if not hasattr(reader, "classnames"):
        raise ConfigError(f"task {task.name!r}: data format {reader.format!r} carries no class labels")
    test_split = task.data.split
    val_split, validation = _validation(reader, task, ctx.seed)
    splits = list(dict.fromkeys([params.train_split, *([val_split] if val_split else []), test_split]))
    for split in splits:
        try:
            reader.check(split)
        except DataError as e:
            raise DataError(f"task {task.name!r}: {split!r} split: {e}") from None
    classnames = reader.classnames()
    if params.num_classes and ctx.data_source == "real" and len(classnames) != params.num_classes:
        raise DataError(
            f"{reader.root}/classnames.txt: {len(classnames)} classes, but task {task.name!r} has "
            f"{params.num_classes} (key 'linear_probe.num_classes')"
        )

    ext = load_or_extract(ctx, reader, splits, ctx.batch_size or params.batch_size)
    train, test = ext.splits[params.train_split], ext.splits[test_split]
    if val_split:
        val = ext.splits[val_split]
    else:
        train, val = holdout(train, params.holdout_fraction, validation["seed"])

    device = solver_device(ctx)
    k = len(classnames)
    x_train, y_train = train.features.to(device), train.labels.to(device)
    x_val, y_val = val.features.to(device), val.labels
    select = METRICS[task.primary]

    def evaluate(l2: float, warm: LogRegFit | None) -> tuple[float, LogRegFit]:
        fit = fit_logreg(x_train, y_train, k, l2, init=warm, max_iter=params.max_iter, tol=params.tol)
        return select(fit.predict(x_val).cpu(), y_val), fit

    tolerance = TIE_SAMPLES * sample_effect(task.primary, y_val)
    sweep = sweep_l2(evaluate, params.l2_min, params.l2_max, params.steps_per_decade, tolerance)
    final = fit_logreg(
        torch.cat([x_train, x_val]),
        torch.cat([y_train, y_val.to(device)]),
        k,
        sweep.best_l2,
        init=sweep.best_state,
        max_iter=params.max_iter,
        tol=params.tol,
    )
    logits = final.logits(test.features).cpu()  # (N, K)
    pred = logits.argmax(dim=1)  # (N,) what `final.predict` gives
    metrics = {"top1": top1(pred, test.labels), "mean_per_class": mean_per_class(pred, test.labels)}
    details = {
        "l2": sweep.best_l2,
        "C": 1.0 / sweep.best_l2,  # scikit-learn's C for the same objective (see protocols.logreg)
        "select_metric": task.primary,
        "val_score": sweep.best_score,
        "selection": _selection(sweep, task.primary),
        "sweep": [{"l2": p.l2, "val": p.score, "n_iter": p.n_iter} for p in sweep.points],
        "refit": {"n_iter": final.n_iter, "converged": final.converged, "grad_max": final.grad_max},
        "val_source": _val_source(validation),
        "validation": validation,
        "n_train": len(y_train),
        "n_val": len(y_val),
        "n_test": len(test.labels),
        "num_classes": k,
        "feature_dim": int(train.features.shape[1]),
        "format": reader.format,
        "feature_cache": ext.cache,
        "solver": _solver(device, params),
    }
    if ext.cache_error:
        details["feature_cache_error"] = ext.cache_error
    # Test features are in sample-index order, one row per sample (`SplitFeatures`): row i is sample i.
    index = torch.arange(len(test.labels))
    samples = classification_rows(reader, test_split, index, logits, test.labels) if ctx.log_samples else None
    return ProtocolOutput(
        metrics, n_samples=len(test.labels), details=details, is_global_zero=ext.is_global_zero, samples=samples
    )


def _selection(sweep: SweepResult, metric: str) -> dict[str, Any]:
    scores = {p.l2: p.score for p in sweep.points}
    return {
        "rule": "the strongest l2 whose val score is within `tolerance` of the best val score",
        "tolerance": sweep.tolerance,
        "tolerance_samples": TIE_SAMPLES,  # the tolerance is this many validation samples' largest effect on:
        "metric": metric,
        "best_val": sweep.max_score,
        "candidates": [{"l2": l2, "val": scores[l2]} for l2 in sweep.candidates],  # strong -> weak
        "l2": sweep.best_l2,
    }


def _solver(device: torch.device, params: LinearProbeParams) -> dict[str, Any]:
    return {"device": device.type, "dtype": "float32", "max_iter": params.max_iter, "tol": params.tol}
