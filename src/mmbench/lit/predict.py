"""Inference under a Trainer that keeps every output by sample index and gathers it across ranks.

Each rank sees a disjoint subset of the samples (`IndexedStream`); at the end all ranks all-gather
(index, outputs), sort by index and drop duplicates, so every rank holds exactly the single-process result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader


class IndexedPredictor(L.LightningModule):
    """Runs `fn(model, batch) -> {name: (B, ...) tensor}` over the predict loader; `self.outputs` holds
    `{"index": (N,), name: (N, ...)}` sorted by index after the epoch, identical on every rank."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, dict[str, Any]], dict[str, Tensor]]):
        super().__init__()
        self.model = model
        self.fn = fn
        self._chunks: list[dict[str, Tensor]] = []
        self.outputs: dict[str, Tensor] = {}
        self.samples_per_rank: list[int] = []

    def on_predict_epoch_start(self) -> None:
        self._chunks = []

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Floats travel as float32; integer outputs (ids, labels, bytes) keep their type, so an id above 2**24
        # survives the gather exactly.
        out = {
            k: v.detach().float() if v.is_floating_point() else v.detach()
            for k, v in self.fn(self.model, batch).items()
        }
        out["index"] = batch["index"]
        self._chunks.append(out)

    def on_predict_epoch_end(self) -> None:
        self.outputs = gather_indexed(self, self._chunks, self.samples_per_rank)
        self._chunks = []


def gather_indexed(
    module: L.LightningModule, chunks: list[dict[str, Tensor]], counts: list[int] | None = None
) -> dict[str, Tensor]:
    """Concatenate this rank's chunks, all-gather across ranks (ragged counts padded), sort by `index`, de-dup.
    `counts`, if given, receives how many samples each rank contributed (provenance for multi-process runs)."""
    local = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}
    world = module.trainer.world_size if module._trainer is not None else 1
    if counts is not None:
        counts[:] = [len(local.get("index", []))]
    if world > 1:
        local = _all_gather_ragged(module, local, counts)
    if not local:
        return {}
    order = torch.argsort(local["index"], stable=True)
    local = {k: v[order] for k, v in local.items()}
    keep = torch.ones_like(local["index"], dtype=torch.bool)
    keep[1:] = local["index"][1:] != local["index"][:-1]
    return {k: v[keep].cpu() for k, v in local.items()}


def _all_gather_ragged(
    module: L.LightningModule, local: dict[str, Tensor], counts_out: list[int] | None = None
) -> dict[str, Tensor]:
    # A rank may hold no samples at all; it still takes part in every collective with an empty-shaped template.
    # The shapes of an empty rank are unknown, so first agree on them via the rank that has the most rows.
    count = torch.tensor([len(local.get("index", []))], device=module.device)
    counts = module.all_gather(count).view(-1)  # (world,)
    if counts_out is not None:
        counts_out[:] = [int(c) for c in counts]
    max_n = int(counts.max())
    if max_n == 0:
        return {}
    donor = int(torch.argmax(counts))
    mine = [(k, tuple(v.shape[1:]), v.dtype) for k, v in sorted(local.items())] if local else None
    specs = [mine]
    torch.distributed.broadcast_object_list(specs, src=donor)  # every rank calls it; the donor's value wins
    out: dict[str, Tensor] = {}
    n = int(count)
    for key, shape, dtype in specs[0]:
        padded = torch.zeros((max_n, *shape), dtype=dtype, device=module.device)
        if n:
            padded[:n] = local[key].to(module.device)
        gathered = module.all_gather(padded)  # (world, max_n, ...)
        out[key] = torch.cat([gathered[r, : int(counts[r])] for r in range(len(counts))])
    return out


def predict(trainer: L.Trainer, module: IndexedPredictor, datamodule: L.LightningDataModule) -> dict[str, Tensor]:
    """Run the predict loop; the gathered outputs (identical on every rank). `module.samples_per_rank` tells how
    the samples were shared."""
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    return module.outputs


class StreamDataModule(L.LightningDataModule):
    """Hands each rank its share of an `IndexedStream` once the process group exists."""

    def __init__(self, stream: Any, num_workers: int, collate_fn: Callable):
        super().__init__()
        self.stream, self.num_workers, self.collate_fn = stream, num_workers, collate_fn

    def setup(self, stage: str) -> None:
        from mmbench.lit.sharded import is_sharded

        self.stream.set_partition(self.trainer.global_rank, self.trainer.world_size)
        self.stream.even_parts = is_sharded(self.trainer)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.stream,
            batch_size=self.stream.block_size,  # one batch = one block: identical batches on any rank layout
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            persistent_workers=False,
        )
