"""Data for fine-tuning: a resumable stream of training micro-batches, and exact evaluation streams.

Training reads a map-style table of records: the reader's `random_access(split)` sequence, whose items are built
and decoded on access, in the loader workers (the reader keeps a compact index, never a decoded sample).
The order of training samples is one global stream, a fresh seeded permutation of the table per pass over
it. Optimizer step s takes the next `batch_size` samples of the stream; within the step, micro-batch j of rank r
is the slice ((s * accumulate + j) * world + r) * B : ... + B. Hence

- the effective batches are the same whatever the split into devices x accumulation x device batch;
- a run resumed at step s starts the stream exactly where the interrupted run stood (the start is computed from
  the restored `global_step`, so nothing about the loader needs saving);
- under DDP every rank reads disjoint slices without a `DistributedSampler` (whose padding would repeat samples).

One Lightning "epoch" is one validation interval (`val_every_steps` updates, the last one shorter), so validation
runs at the end of each epoch, and the train loader is rebuilt each epoch at the right stream position.
Evaluation uses `IndexedStream` over a split, or `TableStream` over a hold-out of the training table (the same
block-aligned sample split, gathered by index): exact under DDP. With `selection: holdout` the training table is
`holdout_split`'s kept rows, so no held-out record is ever trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from mmbench.data.base import IndexedStream, Reader, Record, part_blocks
from mmbench.errors import ConfigError, DataError
from mmbench.lit.sharded import is_sharded
from mmbench.models.base import ModelWrapper


def training_table(reader: Reader, split: str, limit: int | None) -> Sequence[Record]:
    """The training split as a sequence of records decoded on access. Never materialised: VQAv2's 443,757
    training questions decoded at once would take hundreds of GB."""
    table = reader.random_access(split, limit)
    if table is None:
        raise ConfigError(
            f"task {reader.task.name!r}: the {reader.format!r} reader offers no random access "
            f"(`random_access`), which fine-tuning needs to draw shuffled batches without holding the split in memory"
        )
    if len(table) == 0:
        raise DataError(f"task {reader.task.name!r}: the {split!r} split of {reader.root} has no samples")
    return table


class StepSampler(Sampler[int]):
    """Sample indices of this rank's micro-batches `start .. start + count - 1` of the global stream."""

    def __init__(self, n: int, micro_batch: int, world: int, rank: int, start: int, count: int, seed: int):
        self.n, self.b, self.world, self.rank = n, micro_batch, world, rank
        self.start, self.count, self.seed = start, max(0, count), seed
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}  # keep memory bounded
            self._perms[epoch] = torch.randperm(self.n, generator=gen)
        return self._perms[epoch]

    def positions(self, micro: int) -> range:
        first = (micro * self.world + self.rank) * self.b
        return range(first, first + self.b)

    def __iter__(self):
        for micro in range(self.start, self.start + self.count):
            for pos in self.positions(micro):
                epoch, offset = divmod(pos, self.n)
                yield int(self._perm(epoch)[offset])

    def __len__(self) -> int:
        return self.count * self.b


class Table(Dataset):
    """Item i = `to_item(records[i])`: the record (and its image) is built in the loader worker that asks for it."""

    def __init__(self, records: Sequence[Record], to_item: Callable[[Record], dict[str, Any]]):
        self.records, self.to_item = records, to_item

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.to_item(self.records[i])


class Rows(Sequence):
    """Some rows of a table, by position (a view: the records stay where the table keeps them)."""

    def __init__(self, table: Sequence[Record], positions: Tensor):
        self.table, self.positions = table, positions  # (n,) int64, 8 bytes a row

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> Record:
        return self.table[int(self.positions[i])]


def holdout_split(table: Sequence[Record], fraction: float, seed: int) -> tuple[Rows, Rows]:
    """(rows kept for training, rows held out for selection): a seeded `fraction` of the table (at least one row
    on each side), both in table order. Held-out records keep their `index` in the split."""
    n = len(table)
    if n < 2:
        raise DataError(f"the training split has {n} record: too few to hold out part of it for selection")
    held = min(n - 1, max(1, round(n * fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Rows(table, order[held:].sort().values), Rows(table, order[:held].sort().values)


class TableStream(IterableDataset):
    """Evaluation over the rows of a table (the held-out part of the training split), partitioned exactly like
    `mmbench.data.IndexedStream`: blocks of `block_size` consecutive rows, block b to part b % (ranks x workers),
    so a multi-process evaluation gathers exactly the single-process outputs. An empty table is a valid stream
    (selection: final checks nothing, but every interval still ends in a checkpoint)."""

    def __init__(self, rows: Sequence[Record], to_item: Callable[[Record], dict[str, Any]], block_size: int):
        super().__init__()
        self.rows, self.to_item, self.block_size = rows, to_item, block_size
        self.rank, self.world_size = 0, 1
        self.even_parts = False  # as IndexedStream's (FSDP)

    def set_partition(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        n_parts, part = self.world_size * workers, self.rank * workers + worker
        n, size = len(self.rows), self.block_size
        for b in part_blocks(-(-n // size), n_parts, part, even=self.even_parts):
            for pos in range(b * size, min((b + 1) * size, n)):
                yield self.to_item(self.rows[pos])


def item_fn(
    kind: str,
    input: str,
    split: str,
    transform: Callable[[Any], Tensor] | None = None,
    vocab: Any = None,
    train: bool = False,
) -> Callable[[Record], dict[str, Any]]:
    """Record -> model item: text (+ pair), pixels for `input: pair`, and the target the head's loss needs
    (class id, real score, or VQA soft scores); VQA items also carry what the metric needs, as `extras`."""

    def fn(rec: Record) -> dict[str, Any]:
        item = {"index": rec["index"], "text": rec["text"], "text_pair": rec.get("text_pair")}
        if input == "pair":
            if rec.get("image") is None:
                raise DataError(f"{split} record {rec['index']}: no image, but the task fine-tunes on image+text")
            item["pixel_values"] = transform(rec["image"])
        if kind == "vqa":
            answers = list(rec.get("answers") or [])
            if train:
                item["target"] = vocab.soft_targets(answers)
            keys = ("question_id", "answer_type", "question_type")
            item["extras"] = {"answers": answers, **{k: rec.get(k) for k in keys}}
        elif rec.get("label") is None:
            raise DataError(
                f"{split} record {rec['index']} (key {rec.get('key', '?')}): no label; fine-tuning and evaluation "
                f"need labelled splits (GLUE hides its test labels: evaluate on validation)"
            )
        else:
            item["target"] = rec["label"]
        return item

    return fn


class Collate:
    """Tokenize the batch's texts at once (padding to the longest), stack pixels and targets."""

    def __init__(self, model: ModelWrapper, kind: str, max_length: int | None):
        self.tokenize, self.kind, self.max_length = model.tokenize, kind, max_length

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        texts = [it["text"] for it in items]
        pairs = [it["text_pair"] for it in items]
        has_pair = [p is not None for p in pairs]
        if any(has_pair) and not all(has_pair):
            raise DataError(f"records {[it['index'] for it in items]}: some have a second text and some do not")
        batch: dict[str, Any] = {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "tokens": self.tokenize(texts, pairs if all(has_pair) else None, max_length=self.max_length),
        }
        if "pixel_values" in items[0]:
            batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        if "target" in items[0]:
            targets = [it["target"] for it in items]
            if self.kind == "vqa":
                batch["target"] = torch.stack(targets).float()
            else:
                batch["target"] = torch.tensor(targets, dtype=torch.float if self.kind == "regression" else torch.long)
        if "extras" in items[0]:
            batch["extras"] = [it["extras"] for it in items]
        return batch


def _loader_generator() -> torch.Generator:
    # The loaders' own generator: creating an iterator then draws no number from the global RNG.
    return torch.Generator().manual_seed(0)


class FinetuneData(L.LightningDataModule):
    def __init__(
        self,
        train: Table,
        val: IndexedStream | TableStream,
        collate: Collate,
        micro_batch: int,
        accumulate: int,
        max_steps: int,
        val_every_steps: int,
        seed: int,
        num_workers: int,
    ):
        super().__init__()
        self.train, self.val, self.collate = train, val, collate
        self.micro_batch, self.accumulate, self.seed, self.num_workers = micro_batch, accumulate, seed, num_workers
        self.max_steps, self.val_every_steps = max_steps, max(1, val_every_steps)

    def setup(self, stage: str) -> None:
        self.val.set_partition(self.trainer.global_rank, self.trainer.world_size)
        self.val.even_parts = is_sharded(self.trainer)

    def _loader(self, dataset: Any, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            generator=_loader_generator(),
            persistent_workers=False,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        done = t.global_step * self.accumulate  # micro-batches this rank has consumed: restored on resume
        count = min(self.val_every_steps, self.max_steps - t.global_step) * self.accumulate
        sampler = StepSampler(len(self.train), self.micro_batch, t.world_size, t.global_rank, done, count, self.seed)
        return self._loader(self.train, batch_size=self.micro_batch, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, batch_size=self.val.block_size)  # one batch = one block (exact under DDP)
