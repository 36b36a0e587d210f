"""One place that decides how a Trainer is built, so that every protocol runs the same on 1 CPU, 1 GPU or many."""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from tqdm import tqdm

from mmbench.data.base import IndexedStream
from mmbench.errors import ConfigError
from mmbench.lit.loggers import LoggerOptions

# `auto`: one process as is, DDP for more; `fsdp`: parameters sharded across the ranks (`mmbench.lit.sharded`);
# `deepspeed`: Lightning's, when the package is installed.
STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")


@dataclass
class TrainerOptions:
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str | None = None  # e.g. "bf16-mixed", "16-mixed"; None = 32-true
    progress: bool = True
    deterministic: bool = False
    logger: LoggerOptions | None = None  # --logger: what the Trainers that train log to (`lit.loggers.make_logger`)
    strategy: str = "auto"  # one of STRATEGIES

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


def check_strategy(strategy: str) -> None:
    """A strategy mmbench can run, before any work: one line naming `--strategy` otherwise."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("--strategy deepspeed: DeepSpeed is not installed (pip install deepspeed)")


def _strategy(opts: TrainerOptions) -> Any:
    """Lightning's strategy for the options: a fresh object per Trainer (a strategy holds the wrapped model)."""
    if opts.strategy == "fsdp":
        from mmbench.lit.sharded import ShardedStrategy

        return ShardedStrategy()
    if opts.strategy in ("ddp", "deepspeed"):
        return opts.strategy
    return "ddp" if opts.world_size > 1 else "auto"


def make_trainer(opts: TrainerOptions, **overrides: Any) -> L.Trainer:
    """A Trainer with the suite's defaults: no logger, our own sample splitting (`use_distributed_sampler=False`,
    see `mmbench.data.IndexedStream`), DDP when more than one process (gloo on CPU, NCCL on GPU) unless
    `opts.strategy` names another. The cluster (torchrun, SLURM, or Lightning's own launcher) is Lightning's to
    detect from the environment."""
    quiet_lightning()
    callbacks = [*overrides.pop("callbacks", []), *([ProgressBar()] if opts.progress else [])]
    kwargs: dict[str, Any] = dict(
        accelerator=opts.accelerator,
        devices=opts.devices,
        num_nodes=opts.num_nodes,
        strategy=_strategy(opts),
        precision=opts.precision or "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=opts.progress,
        enable_model_summary=False,
        use_distributed_sampler=False,
        deterministic=opts.deterministic,
        callbacks=callbacks,
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


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars, counting what a reader of an mmbench run expects.

    - Fine-tuning counts optimizer steps against the run's total (`fine-tuning: step 300/1000`), across
      Lightning's epochs (here one epoch is one validation interval, and `max_epochs=-1` printed `Epoch 2/-2`)
      and from the step a resumed run starts at.
    - Validation and prediction count samples (`rte validation: 40/301 samples`) against this rank's share of
      the split: the size of the stream's index (capped by `--limit`), shared among ranks and loader workers as
      `IndexedStream` shares its blocks. Other streams (a fine-tuning hold-out) count samples without a total
      (an iterable stream has no length: Lightning printed `10/?`).
    """

    TRAIN_FORMAT = "{desc}step {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"
    SAMPLES_FORMAT = "{desc}{n_fmt}/{total_fmt} samples {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"
    COUNT_FORMAT = "{desc}{n_fmt} samples [{elapsed}, {rate_noinv_fmt}]"

    def init_train_tqdm(self) -> tqdm:
        trainer = self.trainer
        total = trainer.max_steps if trainer.max_steps > 0 else None
        fmt = self.TRAIN_FORMAT if total else "{desc}step {n_fmt} [{elapsed}{postfix}]"
        return self._bar("fine-tuning", total, fmt, trainer.global_step, leave=True, position=0)

    def init_validation_tqdm(self) -> tqdm:
        return self._samples_bar(_loader(self.trainer.val_dataloaders, 0), "validate ", leave=False, position=1)

    def init_predict_tqdm(self) -> tqdm:
        return self._samples_bar(_loader(self.trainer.predict_dataloaders, 0), "", leave=True, position=0)

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # one bar for the whole run: Lightning's resets it per epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if not bar.disable and step != bar.n and (step % self.refresh_rate == 0 or step == bar.total):
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            _show(bar, step)

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx) and dataloader_idx > 0 and not trainer.sanity_checking:
            self.val_progress_bar.close()
            self.val_progress_bar = self._samples_bar(
                _loader(trainer.val_dataloaders, dataloader_idx), "validate ", leave=False, position=1
            )

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        if not trainer.sanity_checking:
            self._advance(self.val_progress_bar, batch, batch_idx)

    def on_predict_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx) and dataloader_idx > 0:
            self.predict_progress_bar.close()
            self.predict_progress_bar = self._samples_bar(
                _loader(trainer.predict_dataloaders, dataloader_idx), "", leave=True, position=0
            )

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        self._advance(self.predict_progress_bar, batch, batch_idx)

    def _samples_bar(self, loader: Any, prefix: str, leave: bool, position: int) -> tqdm:
        stream = getattr(loader, "dataset", None)
        if isinstance(stream, IndexedStream):
            name, total = f"{stream.reader.task.name} {stream.split}", rank_share(stream, loader.num_workers)
        else:
            name, total = "samples", None
        fmt = self.SAMPLES_FORMAT if total else self.COUNT_FORMAT
        return self._bar(prefix + name, total, fmt, 0, leave=leave, position=position)

    def _bar(self, desc: str, total: int | None, fmt: str, initial: int, leave: bool, position: int) -> tqdm:
        return Tqdm(
            desc=f"{desc}: ",  # what set_description would make of it
            total=total,
            initial=initial,
            unit=" samples",
            position=2 * self.process_position + position,
            disable=self.is_disabled,
            leave=leave,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=fmt,
        )

    def _advance(self, bar: tqdm, batch: Any, batch_idx: int) -> None:
        index = batch.get("index") if isinstance(batch, dict) else None
        n = bar.n + (len(index) if index is not None else 1)
        if (batch_idx + 1) % self.refresh_rate == 0 or n == bar.total:
            _show(bar, n)
        else:
            bar.n = n


def rank_share(stream: IndexedStream, num_workers: int) -> int:
    """How many of the split's samples this rank streams (the stream's index knows the split's size, `--limit`
    applied)."""
    n = len(stream.records)
    if stream.world_size == 1:
        return n
    # IndexedStream gives block b to part b % (world x workers); this rank owns parts rank x workers ... + workers - 1
    workers, block = max(1, num_workers), stream.block_size
    mine = range(stream.rank * workers, (stream.rank + 1) * workers)
    return sum(min(block, n - b * block) for b in range(-(-n // block)) if b % (stream.world_size * workers) in mine)


def _loader(loaders: Any, index: int) -> Any:
    return loaders[index] if isinstance(loaders, list | tuple) else loaders


def _show(bar: tqdm, n: int) -> None:
    if not bar.disable:
        bar.n = n
        bar.refresh()
