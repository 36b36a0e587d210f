"""Linear probe (CLIP appendix A.3; FLAVA's 22 vision tasks): frozen image features, multinomial logistic
regression with L-BFGS, L2 strength swept on val, refit on train+val, test top-1 and mean per-class accuracy.

Val is the task's official split (`linear_probe.val_split`) or a seeded hold-out of train. The sweep selects on the
task's primary metric. Features come from `protocols.features` (cached by content; a cache hit never builds the
model); the classifier is `protocols.logreg` (on the GPU when there is one).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmbench.data import open_reader
from mmbench.errors import ConfigError, DataError
from mmbench.metrics.accuracy import METRICS, mean_per_class, top1
from mmbench.models.base import Capability
from mmbench.protocols.base import ProtocolOutput, RunContext
from mmbench.protocols.features import SplitFeatures, load_or_extract
from mmbench.protocols.logreg import LogRegFit, fit_logreg, sweep_l2
from mmbench.schema import TaskConfig


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


def run(task: TaskConfig, ctx: RunContext) -> ProtocolOutput:
    params = task.linear_probe
    ctx.require(Capability.IMAGE, "the linear probe")
    if task.primary not in METRICS:
        raise ConfigError(f"task {task.name!r}: key 'primary': the linear probe selects on {sorted(METRICS)}")
    reader = open_reader(task, ctx.data_root)
    if not hasattr(reader, "classnames"):
        raise ConfigError(f"task {task.name!r}: data format {reader.format!r} carries no class labels")
    test_split = task.data.split
    splits = list(dict.fromkeys([params.train_split, *([params.val_split] if params.val_split else []), test_split]))
    for split in splits:
        try:
            reader.check(split)
        except DataError as e:
            hint = (
                " (set task.linear_probe.val_split=null to hold out part of train)" if split == params.val_split else ""
            )
            raise DataError(f"task {task.name!r}: {split!r} split: {e}{hint}") from None
    classnames = reader.classnames()
    if params.num_classes and ctx.data_source == "real" and len(classnames) != params.num_classes:
        raise DataError(
            f"{reader.root}/classnames.txt: {len(classnames)} classes, but task {task.name!r} has "
            f"{params.num_classes} (key 'linear_probe.num_classes')"
        )

    ext = load_or_extract(ctx, reader, splits, ctx.batch_size or params.batch_size)
    train, test = ext.splits[params.train_split], ext.splits[test_split]
    if params.val_split:
        val, val_source = ext.splits[params.val_split], f"split {params.val_split!r}"
    else:
        train, val = holdout(train, params.holdout_fraction, params.holdout_seed)
        val_source = f"hold-out {params.holdout_fraction:g} of {params.train_split!r} (seed {params.holdout_seed})"

    device = solver_device(ctx)
    k = len(classnames)
    x_train, y_train = train.features.to(device), train.labels.to(device)
    x_val, y_val = val.features.to(device), val.labels
    select = METRICS[task.primary]

    def evaluate(l2: float, warm: LogRegFit | None) -> tuple[float, LogRegFit]:
        fit = fit_logreg(x_train, y_train, k, l2, init=warm, max_iter=params.max_iter, tol=params.tol)
        return select(fit.predict(x_val).cpu(), y_val), fit

    sweep = sweep_l2(evaluate, params.l2_min, params.l2_max, params.steps_per_decade)
    final = fit_logreg(
        torch.cat([x_train, x_val]),
        torch.cat([y_train, y_val.to(device)]),
        k,
        sweep.best_l2,
        init=sweep.best_state,
        max_iter=params.max_iter,
        tol=params.tol,
    )
    pred = final.predict(test.features).cpu()
    metrics = {"top1": top1(pred, test.labels), "mean_per_class": mean_per_class(pred, test.labels)}
    details = {
        "l2": sweep.best_l2,
        "C": 1.0 / sweep.best_l2,  # scikit-learn's C for the same objective (see protocols.logreg)
        "select_metric": task.primary,
        "val_score": sweep.best_score,
        "sweep": [{"l2": p.l2, "val": p.score, "n_iter": p.n_iter} for p in sweep.points],
        "refit": {"n_iter": final.n_iter, "converged": final.converged, "grad_max": final.grad_max},
        "val_source": val_source,
        "n_train": len(y_train),
        "n_val": len(y_val),
        "n_test": len(test.labels),
        "num_classes": k,
        "feature_dim": int(train.features.shape[1]),
        "format": reader.format,
        "feature_cache": ext.cache,
        "solver": {"device": device.type, "dtype": "float32", "max_iter": params.max_iter, "tol": params.tol},
    }
    return ProtocolOutput(metrics, n_samples=len(test.labels), details=details, is_global_zero=ext.is_global_zero)
