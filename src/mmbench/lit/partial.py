"""Inference that survives a kill: finished batches are saved as they come and skipped when the run resumes.

`PartialPredictor` is an `IndexedPredictor` that, every `flush_seconds`, saves the outputs of the batches it
finished since the last save to `<folder>/part-r<rank>-<time>.pt` (atomically: a part is whole or absent). A
resumed run reads every part first (`load_parts`), hands the finished blocks to the stream to skip
(`IndexedStream.skip_blocks`: with the loader's batch = one block, a part holds whole blocks), and merges the parts
with what it computes (`merge`). Each block's outputs depend only on the block, so the merged outputs equal an
uninterrupted run's, on any number of devices before or after the kill.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmbench.lit.predict import IndexedPredictor
from mmbench.paths import atomic_save

log = logging.getLogger("mmbench")

# How often finished batches are saved: at most a minute of work is lost to a kill, and a save costs nothing next
# to a minute of generation. MMBENCH_PARTIAL_SAVE_SECONDS=0 saves after every batch (the resume tests use it).
SAVE_SECONDS = float(os.environ.get("MMBENCH_PARTIAL_SAVE_SECONDS", "60"))


class PartialPredictor(IndexedPredictor):
    def __init__(
        self,
        model: nn.Module,
        fn: Callable[[nn.Module, dict[str, Any]], dict[str, Tensor]],
        folder: Path | None,
        flush_seconds: float | None = None,
    ):
        super().__init__(model, fn)
        self.folder = folder
        self.flush_seconds = SAVE_SECONDS if flush_seconds is None else flush_seconds
        self._pending: list[dict[str, Tensor]] = []
        self._last_flush = time.monotonic()

    def on_predict_epoch_start(self) -> None:
        super().on_predict_epoch_start()
        self._pending, self._last_flush = [], time.monotonic()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().predict_step(batch, batch_idx)
        self._pending.append(self._chunks[-1])
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def on_predict_epoch_end(self) -> None:
        self.flush()
        super().on_predict_epoch_end()

    def flush(self) -> None:
        """Save the batches finished since the last flush (a failed write only costs the resume, so it warns)."""
        self._last_flush = time.monotonic()
        if self.folder is None or not self._pending:
            return
        part = {k: torch.cat([c[k] for c in self._pending]).cpu() for k in self._pending[0]}
        rank = self.global_rank if self._trainer is not None else 0
        path = self.folder / f"part-r{rank}-{time.time_ns()}.pt"
        try:
            atomic_save(path, part)
        except OSError as e:
            log.warning("cannot save finished batches to %s (%s): a resumed run will redo them", path, e)
            self.folder = None  # one warning, not one per batch
        self._pending = []


def load_parts(folder: Path) -> dict[str, Tensor]:
    """Every readable part in `folder`, concatenated (not yet sorted); a damaged part is skipped with a warning
    (its batches run again)."""
    parts = []
    for path in sorted(folder.glob("part-r*.pt")):
        try:
            part = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(part, dict) or "index" not in part:
                raise ValueError("not a part file")
        except Exception as e:  # noqa: BLE001 - any unreadable part is redone, never trusted
            log.warning("%s is unreadable (%s): its batches run again", path, str(e).splitlines()[0] if str(e) else e)
            continue
        parts.append(part)
    if not parts:
        return {}
    keys = set(parts[0])
    parts = [p for p in parts if set(p) == keys]
    return {k: torch.cat([p[k] for p in parts]) for k in sorted(keys)}


def done_blocks(done: dict[str, Tensor], block_size: int) -> frozenset[int]:
    return frozenset(int(b) for b in (done["index"].long() // block_size).unique()) if done else frozenset()


def merge(done: dict[str, Tensor], new: dict[str, Tensor]) -> dict[str, Tensor]:
    """Outputs saved before and computed now, sorted by index, duplicates dropped (a part saved just before a kill
    may repeat a batch the resumed run computed again only if the stream was told otherwise; dropping is safe)."""
    if not done:
        return new
    if not new:
        both = done
    else:
        keys = sorted(set(done) & set(new))
        both = {k: torch.cat([done[k].to(new[k].dtype), new[k]]) for k in keys}
    order = torch.argsort(both["index"], stable=True)
    both = {k: v[order] for k, v in both.items()}
    keep = torch.ones_like(both["index"], dtype=torch.bool)
    keep[1:] = both["index"][1:] != both["index"][:-1]
    return {k: v[keep] for k, v in both.items()}


def reset(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
