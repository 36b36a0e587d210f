"""One place that decides how a Trainer is built, so that every protocol runs the same on 1 CPU, 1 GPU or many."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L


@dataclass
class TrainerOptions:
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str | None = None  # e.g. "bf16-mixed", "16-mixed"; None = 32-true
    progress: bool = True
    deterministic: bool = False


def make_trainer(opts: TrainerOptions, **overrides: Any) -> L.Trainer:
    """A Trainer with the suite's defaults: no logger, our own sample splitting (`use_distributed_sampler=False`,
    see `mmbench.data.IndexedStream`), DDP when more than one device (gloo on CPU, NCCL on GPU)."""
    quiet_lightning()
    multi = opts.devices > 1 or opts.num_nodes > 1
    kwargs: dict[str, Any] = dict(
        accelerator=opts.accelerator,
        devices=opts.devices,
        num_nodes=opts.num_nodes,
        strategy="ddp" if multi else "auto",
        precision=opts.precision or "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=opts.progress,
        enable_model_summary=False,
        use_distributed_sampler=False,
        deterministic=opts.deterministic,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def quiet_lightning() -> None:
    """Lightning's banner lines, tips and deprecation chatter say nothing about the numbers; keep real warnings."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        ".*does not have many workers.*",
        ".*GPU available but not used.*",
        ".*predict returned None.*",
        ".*all_gather is deprecated.*",
        ".*isinstance.treespec, LeafSpec.*",
    ):
        warnings.filterwarnings("ignore", message=message)
