"""What a protocol receives (`RunContext`) and returns (`ProtocolOutput`).

A protocol is a function `run(task: TaskConfig, ctx: RunContext) -> ProtocolOutput`. It asks the context for the
model only when it needs one (`ctx.model()`), so a protocol that can answer from a cache never loads weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmbench.lit.trainer import TrainerOptions
from mmbench.models import wrapper_class
from mmbench.models.base import Capability, ModelWrapper, check_capabilities
from mmbench.paths import cache_dir
from mmbench.schema import ModelConfig


@dataclass
class RunContext:
    model_cfg: ModelConfig
    data_root: Path  # the task's dataset folder (real or generated)
    data_source: str  # "real" | "synthetic"
    model_factory: Callable[..., ModelWrapper]  # (cfg, fresh=False) -> wrapper
    trainer: TrainerOptions = field(default_factory=TrainerOptions)
    limit: int | None = None
    batch_size: int | None = None  # per-device batch size; None = the task's
    num_workers: int = 2
    seed: int = 0
    cache_dir: Path = field(default_factory=cache_dir)
    artifact_dir: Path | None = None  # where a protocol may write extra files (e.g. a VQA submission JSON)
    run_key: str | None = None  # the result's config hash: names resumable state (fine-tuning checkpoints)
    fresh: bool = False  # discard resumable state (fine-tuning run folders) instead of resuming from it
    log_samples: bool = False  # return per-sample rows (`ProtocolOutput.samples`) for `--log-samples`
    # A preset name -> its config, through the run's registry: protocols that need a second model (RICES's CLIP)
    resolve_model: Callable[[str], ModelConfig] | None = None
    _model: ModelWrapper | None = field(default=None, repr=False)

    def model(self, fresh: bool = False) -> ModelWrapper:
        """The wrapper, built on first use and shared across the run's tasks; `fresh=True` builds an untouched
        copy for protocols that change weights (fine-tuning)."""
        if fresh:
            return self.model_factory(self.model_cfg, fresh=True)
        if self._model is None:
            self._model = self.model_factory(self.model_cfg)
        return self._model

    def require(self, needed: Capability, what: str) -> None:
        """Fail early (as n/a) when the model cannot do what the task needs: before any data is read, from the
        wrapper class alone; once built, from the instance (a checkpoint may lack a head the class offers)."""
        if self._model is not None:
            self._model.require(needed, what)
            return
        check_capabilities(self.model_cfg.name, wrapper_class(self.model_cfg).capabilities, needed, what)

    @property
    def model_loaded(self) -> bool:
        return self._model is not None


@dataclass
class ProtocolOutput:
    metrics: dict[str, float]  # natural scale (fractions for accuracies/recalls); results scale scores to 0-100
    n_samples: int
    details: dict[str, Any] = field(default_factory=dict)  # protocol extras (chosen L2 strength, format read, ...)
    is_global_zero: bool = True  # only rank 0 writes results in a multi-process run
    # With `ctx.log_samples`: one JSON-able row per evaluated sample, built from the predictions the metrics were
    # computed from; lazy (iterated once, by the writer on rank 0), so rows are never all held at once.
    samples: Iterable[dict[str, Any]] | None = None
