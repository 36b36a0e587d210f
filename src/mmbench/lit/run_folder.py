"""The folder of one fine-tuning run: best-checkpoint selection and resume after a kill.

`<cache>/finetune/<model>/<task>/<config hash>/` holds
- `last.ckpt`: the full Lightning state (weights, optimiser, scheduler, loop progress, this callback's selection
  state) after the latest validation; a re-run of the same command resumes from it;
- `best.pt`: the weights (a plain state dict, loaded with `weights_only=True`) at the best validation so far;
- `state.json`: the step of `last.ckpt`, whether training is done, the selection rule, the best step and value and
  the whole validation history (read by the protocol without loading a checkpoint; for people too).
Every file is written to a temporary name and renamed, so a kill never leaves half a file; `best.pt` is written
before `last.ckpt`, and a resumed run that repeats an interval rewrites it with identical weights.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from mmbench.paths import atomic_write, atomic_write_text

LAST, BEST, STATE = "last.ckpt", "best.pt", "state.json"


def read_state(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def prepare(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The state of a resumable run in `folder` (`{}` when a kill came between `last.ckpt` and `state.json`),
    or None for a fresh start. A folder made from other data (another training-set size or answer vocabulary
    under the same config) is cleared rather than resumed, and so are the leftovers of a run killed before its
    first checkpoint."""
    state = read_state(folder)
    if state is not None and state.get("fingerprint") != fingerprint:
        shutil.rmtree(folder, ignore_errors=True)
    elif (folder / LAST).is_file():
        return state or {}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return None


class RunFolder(Callback):
    """After every validation inside `fit`: update the best (by `select`, higher is better; NaN never wins),
    then write `last.ckpt` and `state.json`."""

    def __init__(self, folder: Path, select: str, max_steps: int, fingerprint: str, rule: dict[str, Any]):
        self.folder, self.select, self.max_steps = Path(folder), select, max_steps
        self.fingerprint, self.rule = fingerprint, rule
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.history: list[dict[str, float]] = []
        self.resumed_from: int | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.resumed_from = trainer.global_step  # restored from `last.ckpt`, or 0

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Also after a fit that had nothing left to do (a kill came between `last.ckpt` and `state.json` at the
        # last step; Lightning then skips the training hooks): the restored selection state is written out.
        if self.resumed_from is None:
            self.resumed_from = trainer.global_step
        if trainer.is_global_zero:
            self.write_state(trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.history = list(state["history"])

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        step = trainer.global_step
        if self.history and self.history[-1]["step"] == step:
            return  # Lightning repeats an interrupted validation on resume: already recorded
        metrics = {k: float(v) for k, v in module.val_metrics.items()}
        self.history.append({"step": step, **metrics})
        value = metrics.get(self.select, math.nan)
        if not math.isnan(value) and (self.best_value is None or value > self.best_value):
            self.best_value, self.best_step = value, step
            if trainer.is_global_zero:
                weights = {k: v.detach().cpu() for k, v in module.state_dict().items()}
                atomic_write(self.folder / BEST, lambda p: torch.save(weights, p))
        tmp = self.folder / f".{LAST}.tmp"
        trainer.save_checkpoint(tmp)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.folder / LAST)
            self.write_state(step)
        trainer.strategy.barrier("mmbench.run_folder")

    def write_state(self, step: int) -> None:
        state = {
            "step": step,
            "max_steps": self.max_steps,
            "done": step >= self.max_steps,
            "fingerprint": self.fingerprint,
            "selection": {**self.rule, "metric": self.select},
            "best_step": self.best_step,
            "best_value": self.best_value,
            "history": self.history,
        }
        atomic_write_text(self.folder / STATE, json.dumps(state, indent=1) + "\n")


def load_best(module: torch.nn.Module, folder: Path) -> bool:
    """Load `best.pt` into `module`; False when the run never validated (e.g. `max_steps: 0`)."""
    path = Path(folder) / BEST
    if not path.is_file():
        return False
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return True
