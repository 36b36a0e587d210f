"""A plain image folder, `<root>/<split>/<class>/<image>` (Food101, UCF101 middle frames, anything users convert).

Class order (label i = class i):
- `<root>/classnames.txt`, if present, lists the class *folder names* in label order, one per line (e.g. Food101's
  `meta/classes.txt` copied as it is). A class folder that is not listed is an error, not a new class.
- Otherwise the sorted union of the class folders of the task's splits (train, val, test), so that a split missing
  a class does not shift the others' labels. Sorted as strings -- torchvision's `ImageFolder` order, which
  converted datasets assume -- except when every name is an integer: then numerically, so "10" follows "9".

Images are the files with an image suffix (`.jpg`, `.jpeg`, `.png`, `.webp`, `.bmp`, any case) in each class folder,
sorted by name; other files (`.DS_Store`, notes) are ignored. Sample i of a split is the i-th image in
(label, file name) order.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mmbench.data.base import Reader, Record, decode_image
from mmbench.data.classification import CLASSNAMES_FILE, file_digest, read_classnames
from mmbench.data.columns import LazyRecords, StrColumn, stat_fingerprint
from mmbench.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def class_order(names: list[str]) -> list[str]:
    """String order, or numeric order when every name is an integer (never "10" before "9")."""
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


class ImageFolderReader(Reader):
    format = "image_folder"

    def __init__(self, root: Path, task) -> None:
        super().__init__(root, task)
        self._listing: dict[str, _Listing] = {}  # listed once per split

    @classmethod
    def detect(cls, root: Path, task) -> bool:
        split_dir = Path(root) / task.data.split
        return split_dir.is_dir() and not (split_dir / "nshards.txt").exists()

    def expected(self) -> str:
        return (
            f"{self.root}/{self.task.data.split}/<class>/<image> folders (jpg/png/webp), optionally "
            f"{self.root}/{CLASSNAMES_FILE} listing the class folder names in label order"
        )

    def _splits(self) -> list[str]:
        lp = self.task.linear_probe
        return [s for s in dict.fromkeys([lp.train_split, lp.val_split, self.task.data.split]) if s]

    def classnames(self) -> list[str]:
        listed = self.root / CLASSNAMES_FILE
        if listed.is_file():
            return read_classnames(listed)
        splits = [self.root / s for s in self._splits() if (self.root / s).is_dir()]
        found = {d.name for split_dir in splits for d in split_dir.iterdir() if d.is_dir()}
        if not found:
            raise DataError(
                f"{self.root}: no class folders in {', '.join(self._splits())} (expected {self.expected()})"
            )
        return class_order(list(found))

    def _index(self, split: str) -> _Listing:
        """Every image of the split (path relative to the split folder) and its label, in sample order."""
        if split in self._listing:
            return self._listing[split]
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: split folder missing (expected {self.expected()})")
        labels = {name: i for i, name in enumerate(self.classnames())}
        folders = sorted(d.name for d in os.scandir(split_dir) if d.is_dir())
        unknown = [name for name in folders if name not in labels]
        if unknown:
            raise DataError(
                f"{split_dir / unknown[0]}: class folder {unknown[0]!r} is not in {self.root / CLASSNAMES_FILE}"
            )
        listing = _Listing()
        for folder in sorted(folders, key=lambda name: labels[name]):
            names = sorted(e.name for e in os.scandir(split_dir / folder) if _is_image_name(e.name) and e.is_file())
            for name in names:
                listing.key.append(f"{folder}/{name}")
                listing.label.append(labels[folder])
        if not len(listing.label):
            raise DataError(f"{split_dir}: no images in any class folder (expected {self.expected()})")
        self._listing[split] = listing
        return listing

    def files(self, split: str) -> list[tuple[Path, int]]:
        """Every (image file, label) of the split in sample order."""
        listing, split_dir = self._index(split), self.root / split
        return [(split_dir / key, label) for key, label in zip(listing.key, listing.label)]

    def check(self, split: str) -> None:
        self._index(split)  # the listing is the split: every file it names exists

    def has_split(self, split: str) -> bool:
        return (self.root / split).is_dir()

    def fingerprint(self, split: str) -> str:
        """Identity of the split for caches: every image's path, size and mtime, plus the class list."""
        extra = file_digest(self.root / CLASSNAMES_FILE) + "\n".join(self.classnames()).encode()
        return stat_fingerprint(self.root, [f"{split}/{key}" for key in self._index(split).key], extra)

    def random_access(self, split: str, limit: int | None = None) -> Sequence[Record]:
        n = len(self._index(split).label)
        return LazyRecords(n if limit is None else min(n, limit), partial(self._record, split))

    def sample_ref(self, split: str, i: int) -> dict[str, Any]:
        key = self._index(split).key[i]
        return {"id": key, "image": f"{split}/{key}"}

    def _record(self, split: str, i: int) -> Record:
        listing = self._listing[split]
        key = listing.key[i]
        path = self.root / split / key
        return {"index": i, "key": key, "image": decode_image(path, str(path)), "label": listing.label[i]}


@dataclass
class _Listing:
    key: StrColumn = field(default_factory=StrColumn)  # "<class folder>/<file name>"
    label: array = field(default_factory=lambda: array("l"))


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
