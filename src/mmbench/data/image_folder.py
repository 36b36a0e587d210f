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

from collections.abc import Callable, Iterator
from pathlib import Path

from mmbench.data.base import Reader, Record, decode_image
from mmbench.data.classification import CLASSNAMES_FILE, file_digest, files_fingerprint, read_classnames
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
        self._listing: dict[str, list[tuple[Path, int]]] = {}  # split -> [(file, label)], listed once

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

    def files(self, split: str) -> list[tuple[Path, int]]:
        """Every (image file, label) of the split in sample order."""
        if split in self._listing:
            return self._listing[split]
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: split folder missing (expected {self.expected()})")
        labels = {name: i for i, name in enumerate(self.classnames())}
        folders = sorted(d for d in split_dir.iterdir() if d.is_dir())
        unknown = [d.name for d in folders if d.name not in labels]
        if unknown:
            raise DataError(
                f"{split_dir / unknown[0]}: class folder {unknown[0]!r} is not in {self.root / CLASSNAMES_FILE}"
            )
        listing = []
        for folder in sorted(folders, key=lambda d: labels[d.name]):
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            listing.extend((p, labels[folder.name]) for p in images)
        if not listing:
            raise DataError(f"{split_dir}: no images in any class folder (expected {self.expected()})")
        self._listing[split] = listing
        return listing

    def check(self, split: str) -> None:
        self.files(split)

    def has_split(self, split: str) -> bool:
        return (self.root / split).is_dir()

    def fingerprint(self, split: str) -> str:
        """Identity of the split for caches: every image's path, size and mtime, plus the class list."""
        extra = file_digest(self.root / CLASSNAMES_FILE) + "\n".join(self.classnames()).encode()
        return files_fingerprint([p for p, _ in self.files(split)], self.root, extra)

    def samples(
        self, split: str, limit: int | None = None, keep: Callable[[int], bool] | None = None
    ) -> Iterator[Record]:
        listing = self.files(split)
        for index, (path, label) in enumerate(listing[:limit] if limit is not None else listing):
            if keep is not None and not keep(index):
                continue
            key = path.relative_to(self.root / split).as_posix()
            yield {"index": index, "key": key, "image": decode_image(path, str(path)), "label": label}
