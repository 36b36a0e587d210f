"""One place that decides how a Trainer is built, so that every protocol runs the same on 1 CPU, 1 GPU or many."""

from __future__ import annotations

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
