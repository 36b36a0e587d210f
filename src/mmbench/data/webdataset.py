"""The CLIP_benchmark WebDataset layout (hub repos `clip-benchmark/wds_*`), streamed with the `webdataset` library.

```
<root>/<split>/{nshards.txt, 0.tar, 1.tar, ...}   <root>/dataset_type.txt (retrieval | multilabel | absent)
```
Tar members are `<key>.<ext>` with key `s%07d`; the image is `webp`, `png`, `jpg` or `jpeg`; retrieval samples
carry `txt` = captions joined by newlines; classification samples carry `cls` = the label as an ASCII integer, and
`<root>/classnames.txt` lists the classes in label order (`dataset_type.txt` absent). Nothing is extracted to disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from mmbench.data.base import Reader, Record, decode_image
from mmbench.data.classification import CLASSNAMES_FILE, file_digest, files_fingerprint, parse_label, read_classnames
from mmbench.errors import DataError

IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")


class WdsReader(Reader):
    """Shard bookkeeping and streaming shared by the retrieval and classification variants."""

    dataset_type: str | None = None  # what dataset_type.txt must say (None: file absent = classification)

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
        self.shards(split)

    def fingerprint(self, split: str) -> str:
        """Identity of the split's files for caches: shard names, sizes and mtimes, `nshards.txt` and the class
        list by content (see `mmbench.data.classification`)."""
        split_dir = self.root / split
        extra = file_digest(split_dir / "nshards.txt") + file_digest(self.root / CLASSNAMES_FILE)
        return files_fingerprint(self.shards(split), self.root, extra)

    def raw_samples(self, split: str, limit: int | None, keep: Callable[[int], bool] | None) -> Iterator[Record]:
        """(index, key, shard, raw members) in shard order; members are decoded only for kept indices."""
        import webdataset as wds

        def reraise(exn: Exception) -> bool:
            raise DataError(f"{getattr(exn, 'filename', None) or split}: unreadable tar member ({exn})")

        pipeline = wds.DataPipeline(
            wds.SimpleShardList([str(p) for p in self.shards(split)]), wds.tarfile_to_samples(handler=reraise)
        )
        for index, sample in enumerate(pipeline):
            if limit is not None and index >= limit:
                return
            if keep is not None and not keep(index):
                continue
            yield {"index": index, "key": sample["__key__"], "shard": sample["__url__"], "raw": sample}

    def image(self, rec: Record) -> object:
        where = f"{rec['shard']}:{rec['key']}"
        for ext in IMAGE_EXTS:
            if ext in rec["raw"]:
                return decode_image(rec["raw"][ext], f"{where}.{ext}")
        raise DataError(f"{where}: no image member (looked for .{', .'.join(IMAGE_EXTS)})")


class WdsRetrievalReader(WdsReader):
    format = "wds_retrieval"
    dataset_type = "retrieval"

    def expected(self) -> str:
        split = self.task.data.split
        return f"{self.root}/{split}/nshards.txt, {self.root}/{split}/0.tar ... with <key>.webp + <key>.txt members"

    def samples(self, split: str, limit: int | None = None, keep: Callable[[int], bool] | None = None):
        for rec in self.raw_samples(split, limit, keep):
            where = f"{rec['shard']}:{rec['key']}"
            if "txt" not in rec["raw"]:
                raise DataError(f"{where}: no .txt member with the captions")
            try:
                caps = [c.strip() for c in rec["raw"]["txt"].decode("utf-8").split("\n") if c.strip()]
            except UnicodeDecodeError as e:
                raise DataError(f"{where}.txt: captions are not UTF-8 ({e})") from None
            if not caps:
                raise DataError(f"{where}.txt: no captions")
            yield {"index": rec["index"], "key": rec["key"], "image": self.image(rec), "captions": caps}


class WdsClassificationReader(WdsReader):
    """Image classification (`clip-benchmark/wds_vtab-cifar10`, `wds_imagenet1k`, ...): records
    `{"index", "key", "image", "label"}`; a label outside `classnames.txt` is an error naming shard and key."""

    format = "wds_classification"
    dataset_type = None

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

    def samples(self, split: str, limit: int | None = None, keep: Callable[[int], bool] | None = None):
        n_classes = len(self.classnames())
        for rec in self.raw_samples(split, limit, keep):
            label = parse_label(rec["raw"].get("cls"), f"{rec['shard']}:{rec['key']}", n_classes)
            yield {"index": rec["index"], "key": rec["key"], "image": self.image(rec), "label": label}
