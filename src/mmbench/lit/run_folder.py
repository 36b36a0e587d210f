"""The folder of one fine-tuning run: checkpoint selection and resume after a kill.

`<cache>/finetune/<model>/<task>/<config hash>/` holds
- `last.ckpt`: the full Lightning state (weights, optimiser, scheduler, loop progress, this callback's selection
  state) at the end of the latest interval; a re-run of the same command resumes from it;
- `best.pt`: the weights (a plain state dict, loaded with `weights_only=True`) of the checkpoint selected so far;
- `state.json`: the step of `last.ckpt`, whether training is done, the selection rule, the chosen step and value
  and the whole validation history (read by the protocol without loading a checkpoint; for people too).

Selection (`FinetuneParams.selection`), checked at the end of every interval (`val_every_steps`) and at the last
step:
- `split` / `holdout`: the best value of the selection metric, higher is better. A value within `tolerance` of the
  incumbent's is a tie that the incumbent keeps (`improves`), so among tied values the earliest step wins and a
  pick does not flip on rounding noise. NaN is never selected; when no validation value was defined by the last
  step, the final weights are taken and `chosen_by` says so.
- `final`: the weights at the last step (fixed-schedule recipes); no value is compared.

Every file is written to a temporary name and renamed, so a kill never leaves half a file; `best.pt` is written
before `last.ckpt`, and a resumed run that repeats an interval rewrites it with identical weights. A write that
fails (disk full) removes its temporary file and raises `OutputError` (exit 5) naming the file. Before a resume both
checkpoints are opened (memory-mapped: no tensor is read), so a corrupt one stops the run before any step, naming
the file and how to start afresh (`mmbench run --fresh`).
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

from mmbench.errors import CheckpointError, OutputError
from mmbench.lit.sharded import full_state_dict
from mmbench.paths import atomic_write

LAST, BEST, STATE = "last.ckpt", "best.pt", "state.json"
FRESH_HINT = "run the same command with --fresh to discard this run folder and train from the start"
SELECTIONS = ("split", "holdout", "final")


def improves(value: float, best: float | None, tolerance: float) -> bool:
    """Does `value` take the incumbent `best`'s place? Never when NaN; a value within `tolerance` of the
    incumbent is a tie, which the incumbent keeps."""
    if math.isnan(value):
        return False
    return best is None or value > best + tolerance


def read_state(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def prepare(
    folder: Path, fingerprint: str, fresh: bool = False, sharded: bool = False, accumulate: int | None = None
) -> dict[str, Any] | None:
    """The state of a resumable run in `folder` (`{}` when a kill came between `last.ckpt` and `state.json`),
    or None for a fresh start. A folder made from other data (another training-set size or answer vocabulary
    under the same config) is cleared rather than resumed, and so are the leftovers of a run killed before its
    first checkpoint, and everything when `fresh`. A corrupt checkpoint raises `CheckpointError` naming it."""
    folder = Path(folder)
    state = None if fresh else read_state(folder)
    if fresh or (state is not None and state.get("fingerprint") != fingerprint):
        pass
    elif (folder / LAST).is_file():
        saved = open_checkpoint(folder / LAST)
        if (folder / BEST).is_file():
            open_checkpoint(folder / BEST)
        own = saved.get("callbacks", {}).get(RunFolder.__qualname__, {})
        if own.get("fingerprint", fingerprint) == fingerprint:
            _check_layout(folder / LAST, bool(own.get("sharded", False)), sharded)
            if not (state or {}).get("done"):
                _check_accumulate(folder / LAST, own.get("accumulate"), accumulate)
            for leftover in folder.glob(".*.tmp"):  # a kill in the middle of a write
                leftover.unlink(missing_ok=True)
            return state or {}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return None


def _check_layout(path: Path, saved: bool, now: bool) -> None:
    """An FSDP checkpoint keys its optimizer state by the order of all the model's parameters, a plain one by the
    order of the optimizer's groups: resuming one as the other would give moments to the wrong parameters.
    Either resumes under any number of processes and nodes with the strategy it was written with."""
    if saved != now:
        was = "--strategy fsdp" if saved else "a strategy other than fsdp"
        raise CheckpointError(f"{path}: written under {was}; resume it the same way, or {FRESH_HINT}")


def _check_accumulate(path: Path, saved: int | None, now: int | None) -> None:
    """Lightning's restored loop counts this rank's micro-batches: resumed with another accumulation (other
    --devices x --batch-size split of the same update) it would end the interval, and validate, at another step."""
    if saved is not None and now is not None and saved != now:
        raise CheckpointError(
            f"{path}: trained with {saved} micro-batch(es) per update and process, this run has {now}; resume it "
            f"with --devices x --batch-size giving {saved} (any number of processes), or {FRESH_HINT}"
        )


def open_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint opened memory-mapped (tensors are not read), or `CheckpointError` naming the file."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - whatever a damaged file raises (zip, pickle, EOF), one message
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: unreadable fine-tuning checkpoint ({reason}); {FRESH_HINT}") from None
    if not isinstance(saved, dict) or (path.name == LAST and "state_dict" not in saved):
        raise CheckpointError(f"{path}: not a fine-tuning checkpoint; {FRESH_HINT}")
    return saved


class RunFolder(Callback):
    """At the end of every interval inside `fit`: update the selection (see the module docstring), then write
    `best.pt` when it changed, `last.ckpt` and `state.json`."""

    def __init__(
        self,
        folder: Path,
        select: str,
        max_steps: int,
        fingerprint: str,
        rule: dict[str, Any],
        mode: str = "split",
        tolerance: float = 0.0,
        sharded: bool = False,
        accumulate: int | None = None,
    ):
        if mode not in SELECTIONS:
            raise ValueError(f"selection {mode!r}: expected one of {', '.join(SELECTIONS)}")
        self.folder, self.select, self.max_steps = Path(folder), select, max_steps
        self.fingerprint, self.rule, self.mode, self.tolerance = fingerprint, rule, mode, tolerance
        self.sharded = sharded  # written under FSDP (see `_check_layout`)
        self.accumulate = accumulate  # micro-batches per update and process (see `_check_accumulate`)
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.chosen_by: str | None = None
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
        return {
            "best_value": self.best_value,
            "best_step": self.best_step,
            "chosen_by": self.chosen_by,
            "history": self.history,
            "fingerprint": self.fingerprint,
            "sharded": self.sharded,
            "accumulate": self.accumulate,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.chosen_by = state.get("chosen_by", "value" if self.best_step is not None else None)
        self.history = list(state["history"])

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        step = trainer.global_step
        if self.history and self.history[-1]["step"] == step:
            return  # Lightning repeats an interrupted validation on resume: already recorded
        metrics = {k: float(v) for k, v in module.val_metrics.items()}
        self.history.append({"step": step, **metrics})
        if self.choose(step, metrics):  # the same on every rank: the metrics are gathered
            weights = full_state_dict(trainer, module)  # every rank takes part under FSDP; rank 0 writes
            if trainer.is_global_zero:
                weights = {k: v.detach().cpu() for k, v in weights.items()}
                _write(self.folder / BEST, lambda p: torch.save(weights, p))
        self._write_last(trainer)
        if trainer.is_global_zero:
            self.write_state(step)
        trainer.strategy.barrier("mmbench.run_folder")

    def choose(self, step: int, metrics: dict[str, float]) -> bool:
        """Does the checkpoint of `step` become the selected one? Updates the selection state."""
        last = step >= self.max_steps
        if self.mode == "final":
            chosen, by, value = last, "final", None
        else:
            value = metrics.get(self.select, math.nan)
            chosen, by = improves(value, self.best_value, self.tolerance), "value"
            if not chosen and last and self.best_step is None:
                chosen, by, value = True, "final (no defined validation value)", None
        if chosen:
            self.best_step, self.best_value, self.chosen_by = step, value, by
        return chosen

    def _write_last(self, trainer: L.Trainer) -> None:
        path = self.folder / LAST
        tmp = self.folder / f".{LAST}.tmp"
        try:
            trainer.save_checkpoint(tmp)  # every rank takes part; rank 0 writes
            if trainer.is_global_zero:
                os.replace(tmp, path)
        except OSError as e:  # a full disk or a read-only cache: an output problem, not an unreadable checkpoint
            reason = getattr(e, "reason", None) or e.strerror or str(e)
            raise OutputError(f"{path}: cannot write the fine-tuning checkpoint ({reason})", path, reason) from None
        finally:
            if trainer.is_global_zero:
                tmp.unlink(missing_ok=True)

    def write_state(self, step: int) -> None:
        state = {
            "step": step,
            "max_steps": self.max_steps,
            "done": step >= self.max_steps,
            "fingerprint": self.fingerprint,
            "selection": self.rule,
            "best_step": self.best_step,
            "best_value": self.best_value,
            "chosen_by": self.chosen_by,
            "history": self.history,
        }
        text = json.dumps(state, indent=1) + "\n"
        _write(self.folder / STATE, lambda p: p.write_text(text, newline=""))


def _write(path: Path, write: Any) -> None:
    """`atomic_write`, with a failure (disk full) as one line naming the file. `torch.save` into a file reports
    a failed write as a RuntimeError of its zip writer."""
    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None)
        reason = reason or (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OutputError(f"{path}: cannot write ({reason})", path, reason) from None


def load_best(module: torch.nn.Module, folder: Path) -> bool:
    """Load `best.pt` into `module`; False when the run never validated (e.g. `max_steps: 0`)."""
    path = Path(folder) / BEST
    if not _every_rank_sees(path):
        return False
    try:
        # Memory-mapped: the tensors are copied once, into the module, not first into a second copy of the model.
        weights = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        module.load_state_dict(weights)
        del weights
    except Exception as e:  # noqa: BLE001 - a damaged file or one of another architecture: one message
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: unreadable fine-tuning checkpoint ({reason}); {FRESH_HINT}") from None
    return True


def _every_rank_sees(path: Path) -> bool:
    """Whether `path` exists, the same answer on every rank: rank 0 wrote it, and a node that does not see it
    would evaluate other weights than rank 0 (a cache folder that is not on a filesystem all nodes share)."""
    here = path.is_file()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return here
    seen: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(seen, here)
    if len(set(seen)) > 1:
        missing = [r for r, s in enumerate(seen) if not s]
        raise CheckpointError(
            f"{path}: not visible on rank(s) {missing}: --cache-dir must be a folder every node shares"
        )
    return here
