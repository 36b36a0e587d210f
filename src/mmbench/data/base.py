"""What every on-disk format reader provides, and the evaluation stream that splits samples across ranks."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

from mmbench.errors import DataError
from mmbench.schema import TaskConfig

Record = dict[str, Any]


class Reader:
    """One on-disk format. `samples` yields plain records, each with a stable `index` (its position in the split)."""

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

    def samples(
        self, split: str, limit: int | None = None, keep: Callable[[int], bool] | None = None
    ) -> Iterator[Record]:
        """Records of `split` in a fixed order; only the first `limit`; only decode those whose index `keep`s."""
        raise NotImplementedError

    def num_samples(self, split: str) -> int | None:
        """The split's size when the format tells it cheaply (file metadata, an index already read); None otherwise.
        Only progress bars use it, to show samples against a total."""
        return None

    def random_access(self, split: str, limit: int | None = None) -> Sequence[Record] | None:
        """Optional: a sequence whose item i is record i, decoded on access (what fine-tuning draws shuffled
        batches from; `samples` order and indices). None: the caller materialises `samples(split)` in memory,
        which suits text-only and small datasets but not, say, VQAv2's 443k image questions."""
        return None


def decode_image(data: bytes | Path, where: str) -> Image.Image:
    """Decode fully (lazy PIL decoding would defer a corrupt-file error into a worker); errors name `where`."""
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img
    except FileNotFoundError:
        raise DataError(f"{where}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: cannot decode image ({str(e).splitlines()[0]})") from None


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

    def set_partition(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        n_parts, part = self.world_size * workers, self.rank * workers + worker
        block = self.block_size

        def keep(i: int) -> bool:
            return (i // block) % n_parts == part

        for rec in self.reader.samples(self.split, limit=self.limit, keep=keep):
            yield self.transform(rec)
