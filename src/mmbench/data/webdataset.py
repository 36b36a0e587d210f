"""The CLIP_benchmark WebDataset layout (hub repos `clip-benchmark/wds_*`), read through an index of tar member
offsets (`mmbench.data.tar_index`): random access for fine-tuning, and evaluation reads only its own samples.

```
<root>/<split>/{nshards.txt, 0.tar, 1.tar, ...}   <root>/dataset_type.txt (retrieval | multilabel | absent)
```
Tar members are `<key>.<ext>` with key `s%07d`; the image is `webp`, `png`, `jpg` or `jpeg`; retrieval samples
carry `txt` = captions joined by newlines; classification samples carry `cls` = the label as an ASCII integer, and
`<root>/classnames.txt` lists the classes in label order (`dataset_type.txt` absent). Nothing is extracted to disk.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mmbench.data.base import Reader, Record, decode_image
from mmbench.data.classification import CLASSNAMES_FILE, file_digest, files_fingerprint, parse_label, read_classnames
from mmbench.data.columns import Codes, LazyRecords
from mmbench.data.tar_index import ShardIndex, check_shard_end, scan_shard
from mmbench.errors import DataError

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")


class WdsReader(Reader):
    """Shard bookkeeping and random access shared by the retrieval and classification variants. `check` is the
    cheap one (every shard present and ending like a complete tar); reading scans each shard's headers once
    (`mmbench.data.tar_index`), which checks its member stream in full."""

    dataset_type: str | None = None  # what dataset_type.txt must say (None: file absent = classification)

    def __init__(self, root: Path, task) -> None:
        super().__init__(root, task)
        self._splits: dict[str, _WdsSplit] = {}
        self._fields = Codes()  # member field names ("webp", "cls", ...), coded once for all shards

    @classmethod
    def detect(cls, root: Path, task) -> bool:
        return (Path(root) / task.data.split / "nshards.txt").is_file()

    def has_split(self, split: str) -> bool:
        return (self.root / split).is_dir()  # its nshards.txt and shards are `check`'s business

    def shards(self, split: str) -> list[Path]:
        split_dir = self.root / split
        nshards_file = split_dir / "nshards.txt"
        if not nshards_file.is_file():
            raise DataError(f"{nshards_file}: missing (expected {self.expected()})")
        try:
            n = int(nshards_file.read_text().strip())
        except ValueError:
            raise DataError(f"{nshards_file}: expected one integer, got {nshards_file.read_text()[:40]!r}") from None
        found = sorted(split_dir.glob("*.tar"), key=lambda p: (len(p.stem), p.stem))
        shards = [split_dir / f"{i}.tar" for i in range(n)]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise DataError(f"{nshards_file}: says {n} shards but {', '.join(missing[:3])} missing in {split_dir}")
        if len(found) != n:
            extra = sorted({p.name for p in found} - {p.name for p in shards})
            raise DataError(f"{nshards_file}: says {n} shards but {split_dir} holds {len(found)} (extra: {extra[:3]})")
        return shards

    def check(self, split: str) -> None:
        kind_file = self.root / "dataset_type.txt"
        kind = kind_file.read_text().strip() if kind_file.is_file() else None
        if kind != self.dataset_type:
            want = self.dataset_type or "absent (classification)"
            raise DataError(f"{kind_file}: dataset type is {kind or 'absent'!r}, but this task needs {want}")
        for shard in self.shards(split):
            check_shard_end(shard)

    def fingerprint(self, split: str) -> str:
        """Identity of the split's files for caches: shard names, sizes and mtimes, `nshards.txt` and the class
        list by content (see `mmbench.data.classification`)."""
        split_dir = self.root / split
        extra = file_digest(split_dir / "nshards.txt") + file_digest(self.root / CLASSNAMES_FILE)
        return files_fingerprint(self.shards(split), self.root, extra)

    def _index(self, split: str, need: int | None) -> _WdsSplit:
        """The split's shard indexes, scanned in shard order until `need` samples are known (all: None)."""
        if split not in self._splits:
            self._splits[split] = _WdsSplit(self.shards(split))
        index = self._splits[split]
        while len(index.scanned) < len(index.shards) and (need is None or index.starts[-1] < need):
            shard = scan_shard(index.shards[len(index.scanned)], self._fields)
            index.scanned.append(shard)
            index.starts.append(index.starts[-1] + len(shard))
        return index

    def random_access(self, split: str, limit: int | None = None) -> Sequence[Record]:
        n = self._index(split, limit).starts[-1]
        return LazyRecords(n if limit is None else min(n, limit), partial(self._record, split))

    def sample_ref(self, split: str, i: int) -> dict[str, Any]:
        index = self._index(split, i + 1)
        s = bisect.bisect_right(index.starts, i) - 1
        shard = index.scanned[s]
        key = shard.keys[i - index.starts[s]]
        return {"id": key, "image": f"{shard.path.relative_to(self.root).as_posix()}:{key}"}

    def _record(self, split: str, i: int) -> Record:
        index = self._splits[split]
        s = bisect.bisect_right(index.starts, i) - 1
        shard, local = index.scanned[s], i - index.starts[s]
        key = shard.keys[local]
        return self.record(i, key, f"{shard.path}:{key}", shard.members(local, self._fields))

    def record(self, index: int, key: str, where: str, raw: dict[str, bytes]) -> Record:
        """A sample's record from its raw members; `where` (`<shard>:<key>`) names it in errors."""
        raise NotImplementedError

    def image(self, raw: dict[str, bytes], where: str) -> object:
        for ext in IMAGE_EXTS:
            if ext in raw:
                return decode_image(raw[ext], f"{where}.{ext}")
        raise DataError(f"{where}: no image member (looked for .{', .'.join(IMAGE_EXTS)})")


@dataclass
class _WdsSplit:
    shards: list[Path]
    scanned: list[ShardIndex] = field(default_factory=list)
    starts: list[int] = field(default_factory=lambda: [0])  # index of the first sample of each scanned shard


class WdsRetrievalReader(WdsReader):
    format = "wds_retrieval"
    dataset_type = "retrieval"

    def expected(self) -> str:
        split = self.task.data.split
        return f"{self.root}/{split}/nshards.txt, {self.root}/{split}/0.tar ... with <key>.webp + <key>.txt members"

    def record(self, index: int, key: str, where: str, raw: dict[str, bytes]) -> Record:
        if "txt" not in raw:
            raise DataError(f"{where}: no .txt member with the captions")
        try:
            caps = [c.strip() for c in raw["txt"].decode("utf-8").split("\n") if c.strip()]
        except UnicodeDecodeError as e:
            raise DataError(f"{where}.txt: captions are not UTF-8 ({e})") from None
        if not caps:
            raise DataError(f"{where}.txt: no captions")
        return {"index": index, "key": key, "image": self.image(raw, where), "captions": caps}


class WdsClassificationReader(WdsReader):
    """Image classification (`clip-benchmark/wds_vtab-cifar10`, `wds_imagenet1k`, ...): records
    `{"index", "key", "image", "label"}`; a label outside `classnames.txt` is an error naming shard and key."""

    format = "wds_classification"
    dataset_type = None
    _n_classes: int | None = None  # read from classnames.txt at the first record

    def expected(self) -> str:
        split = self.task.data.split
        return (
            f"{self.root}/{split}/nshards.txt, {self.root}/{split}/0.tar ... with <key>.webp (or png/jpg) + "
            f"<key>.cls members, and {self.root}/{CLASSNAMES_FILE}"
        )

    def check(self, split: str) -> None:
        super().check(split)
        self.classnames()

    def classnames(self) -> list[str]:
        return read_classnames(self.root / CLASSNAMES_FILE)

    def record(self, index: int, key: str, where: str, raw: dict[str, bytes]) -> Record:
        if self._n_classes is None:
            self._n_classes = len(self.classnames())
        label = parse_label(raw.get("cls"), where, self._n_classes)
        return {"index": index, "key": key, "image": self.image(raw, where), "label": label}
