"""Experiment loggers (`--logger csv|tensorboard|wandb`) for the Trainers that train: fine-tuning's loss, learning
rate and validation metrics, one run directory per (model, task, seed).

Layout: `<log dir>/<model>/<task>/seed<N>/version_<k>/` (csv: `metrics.csv` + `hparams.yaml`; tensorboard:
`events.out.tfevents.*`). Lightning numbers the versions, so a resumed or repeated run adds a version instead of
overwriting the curves of the one before (Lightning's CSV writer deletes a `metrics.csv` it finds in its folder).
wandb writes under `<log dir>/wandb/`, one run per (model, task, seed), named `<model>/<task>/seed<N>`.

wandb is optional and imported only when asked for. It runs offline (files only, `wandb sync` uploads them later)
unless the environment says otherwise: `WANDB_MODE` is always obeyed; without it, a run is online only when
`WANDB_API_KEY` is set and `HF_HUB_OFFLINE` is not 1, so a machine without credentials or network never blocks on a
login prompt. The project is `WANDB_PROJECT`, else `mmbench`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmbench.errors import ConfigError

LOGGERS = ("csv", "tensorboard", "wandb")
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


@dataclass(frozen=True)
class LoggerOptions:
    """Where one run (model, task, seed) logs: `<save_dir>/<model>/<task>/seed<N>/`."""

    kind: str  # one of LOGGERS
    save_dir: Path  # --log-dir
    model: str
    task: str  # the result's name (in-context tasks add their shots)
    seed: int
    config_hash: str  # the run's: recorded with the curves, so a log can be matched to its result

    @property
    def group(self) -> str:
        return f"{self.model}/{self.task}"

    @property
    def name(self) -> str:  # a folder path: the model's name made safe for the file system (hf:org/model)
        from mmbench.paths import model_folder

        return f"{model_folder(self.model)}/{self.task}/seed{self.seed}"

    def hparams(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "seed": self.seed, "config_hash": self.config_hash}

    def for_seed(self, seed: int, config_hash: str) -> LoggerOptions:
        return replace(self, seed=seed, config_hash=config_hash)


def check_logger(kind: str) -> None:
    """One line, before any work, for a logger name mmbench does not know or whose package is not installed."""
    if kind not in LOGGERS:
        raise ConfigError(f"--logger {kind!r}: expected one of {', '.join(LOGGERS)}")
    packages = _PACKAGES.get(kind, ())
    if packages and not any(_installed(p) for p in packages):
        raise ConfigError(
            f"--logger {kind} needs the {packages[0]} package: pip install {packages[0]} "
            "(or pip install 'mmbench[loggers]')"
        )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def wandb_offline() -> bool:
    """Offline unless WANDB_MODE says otherwise, or credentials and network are there (see the module doc)."""
    if os.environ.get("WANDB_MODE"):
        return False  # wandb reads WANDB_MODE itself (online, offline, disabled)
    return os.environ.get("HF_HUB_OFFLINE") == "1" or not os.environ.get("WANDB_API_KEY")


def make_logger(opts: LoggerOptions | None) -> Any:
    """The Lightning logger for a training Trainer; False (Lightning's "no logger") when none was asked for."""
    if opts is None:
        return False
    check_logger(opts.kind)
    save_dir = str(opts.save_dir)
    if opts.kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(save_dir, name=opts.name)
    elif opts.kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(save_dir, name=opts.name, default_hp_metric=False)
    else:
        from lightning.pytorch.loggers import WandbLogger

        Path(save_dir).mkdir(parents=True, exist_ok=True)  # wandb falls back to a temporary folder otherwise
        project = os.environ.get("WANDB_PROJECT", "mmbench")
        logger = WandbLogger(
            name=opts.name, save_dir=save_dir, project=project, group=opts.group, offline=wandb_offline()
        )
    logger.log_hyperparams(opts.hparams())  # rank zero only, as every logger call
    return logger


def close_loggers(trainer: Any) -> None:
    """End the training run's logging: a wandb run is finished (otherwise the next seed's logger would attach to
    it: wandb keeps one active run per process), and the Trainer keeps no logger for the evaluation it does next."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        logger.save()
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()
    trainer.loggers = []
