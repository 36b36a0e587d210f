"""What every on-disk format reader provides, and the evaluation stream that splits samples across ranks."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

from mmbench.data.columns import Record
from mmbench.errors import DataError
from mmbench.schema import TaskConfig


class Reader:
    """One on-disk format. Every reader offers, for each split:

    - `check(split)`: before any work -- every file the split refers to exists (annotation files and each image
      they name: one directory listing per image folder; WebDataset: each shard, ending in a complete tar) and
      the annotations parse; else one `DataError` line naming the first missing file (and how many are missing)
      or the bad record. A shard's member stream is checked in full when it is first read;
    - `random_access(split, limit)`: the split as a sequence whose item i is record i, built and decoded on access
      (what fine-tuning draws shuffled batches from); the reader keeps only a compact index per sample;
    - `samples(split, limit, keep)`: the same records in index order (evaluation streams), equal item by item;
    - `fingerprint(split)`: a cheap identity of the files the split reads, which changes when one of them is
      touched, replaced, added or removed (results and caches are only reused for the same data).
    """

    format: ClassVar[str]

    def __init__(self, root: Path, task: TaskConfig):
        self.root = Path(root)
        self.task = task
        self.options: dict[str, Any] = dict(task.data.options.get(self.format, {}))

    @classmethod
    def detect(cls, root: Path, task: TaskConfig) -> bool:
        """Is this format's layout present under `root`? Cheap: looks at file names only."""
        raise NotImplementedError

    def expected(self) -> str:
        """The files this format expects, for the missing-dataset message."""
        raise NotImplementedError

    def check(self, split: str) -> None:
        """Raise `DataError` naming what is missing or inconsistent for `split`."""

    def has_split(self, split: str) -> bool:
        """Does the dataset contain `split` at all? Cheap (one file-system lookup, nothing read), so a caller can
        choose between splits (an official validation split, else a hold-out) before `check` validates the one it
        uses; a split that is present but damaged is `check`'s error, never a silent fallback."""
        raise NotImplementedError(f"{type(self).__name__} cannot tell which splits it has")

    def fingerprint(self, split: str) -> str:
        """`sha256:<hex>` over the names, sizes and modification times of the files `split` reads."""
        raise NotImplementedError

    def random_access(self, split: str, limit: int | None = None) -> Sequence[Record] | None:
        """A sequence whose item i is record i of `split` (only the first `limit`), decoded on access; None when
        the format cannot offer one (then it cannot be fine-tuned on)."""
        return None

    def sample_ref(self, split: str, i: int) -> dict[str, Any]:
        """Record i's own id (`id`: file name, question id, GLUE idx) and where its input is (`image`: a path
        relative to the root, `text`), from the split's index alone -- nothing is decoded. For per-sample logs
        (`--log-samples`); a reader without one gives `{}` and the log names samples by index only."""
        return {}

    def samples(
        self, split: str, limit: int | None = None, keep: Callable[[int], bool] | None = None
    ) -> Iterator[Record]:
        """Records of `split` in index order; only the first `limit`; only those whose index `keep`s (the others
        are not read)."""
        records = self.random_access(split, limit)
        if records is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither samples nor random_access")
        for i in range(len(records)):
            if keep is None or keep(i):
                yield records[i]


def decode_image(data: bytes | Path, where: str) -> Image.Image:
    """Decode fully (lazy PIL decoding would defer a corrupt-file error into a worker); errors name `where`.

    An image over PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, 89M pixels: a warning in PIL up to
    twice that, an error beyond) is an error here in both cases: decoded it would take hundreds of MB in every
    loader worker, and no benchmark image comes close."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
            img.load()
        return img.convert("RGB") if img.mode != "RGB" else img
    except FileNotFoundError:
        raise DataError(f"{where}: image file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{where}: refused as a possible decompression bomb ({_first_line(e)})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: cannot decode image ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class IndexedStream(IterableDataset):
    """Streams a reader's split in blocks of `block_size` consecutive samples; block b belongs to part
    `b % (world_size * workers)`, where a part is one DataLoader worker of one rank.

    With the loader's batch size equal to `block_size`, every batch holds exactly the same samples whatever the
    number of ranks and workers, so per-batch arithmetic (padding lengths, matmul shapes) is bitwise the same as in
    a single-process run. Records carry their index so that gathered results can be sorted and de-duplicated: a
    multi-process evaluation gives exactly the single-process numbers. Splitting by sample blocks (not by shard)
    leaves no rank empty when a dataset has fewer shards than ranks.
    """

    def __init__(
        self,
        reader: Reader,
        split: str,
        transform: Callable[[Record], Any],
        block_size: int,
        limit: int | None = None,
    ):
        super().__init__()
        self.reader, self.split, self.transform = reader, split, transform
        self.block_size, self.limit = block_size, limit
        self.rank, self.world_size = 0, 1
        # FSDP: every rank must run as many forward passes as the others (each one all-gathers parameters), so a
        # part with fewer blocks repeats one of them; the gather drops the repeats by sample index.
        self.even_parts = False
        # Blocks a resumed run already has (`mmbench.lit.partial`): not read. Every block keeps its owner, so the
        # remaining blocks are read exactly as they would have been.
        self.skip_blocks: frozenset[int] = frozenset()
        # The split's compact index, built here (once, before the loader forks its workers); the records are
        # built and decoded in the workers. A reader without random access is streamed (`samples` with `keep`).
        self.records = reader.random_access(split, limit)

    def set_partition(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        n_parts, part = self.world_size * workers, self.rank * workers + worker
        block = self.block_size
        if self.records is None:
            if self.even_parts:
                raise DataError(f"{self.reader.root}: split {self.split!r} is streamed; --strategy fsdp needs an index")
            skip = self.skip_blocks
            keep = lambda i: (i // block) % n_parts == part and i // block not in skip  # noqa: E731
            for rec in self.reader.samples(self.split, limit=self.limit, keep=keep):
                yield self.transform(rec)
            return
        n = len(self.records)
        for b in part_blocks(-(-n // block), n_parts, part, self.skip_blocks, self.even_parts):
            for i in range(b * block, min((b + 1) * block, n)):  # this part's blocks only: the others are not read
                yield self.transform(self.records[i])


def part_blocks(n_blocks: int, n_parts: int, part: int, skip: frozenset[int] = frozenset(), even: bool = False):
    """The blocks of `part` (b % n_parts == part, less `skip`); with `even`, the first of them (or block 0 for a
    part without any) repeated until every part has as many as the part with the most."""
    mine = [b for b in range(part, n_blocks, n_parts) if b not in skip]
    if even:
        most = max(len([b for b in range(p, n_blocks, n_parts) if b not in skip]) for p in range(n_parts))
        live = [b for b in range(n_blocks) if b not in skip]
        if most and live:
            mine += [mine[0] if mine else live[0]] * (most - len(mine))
    return mine
