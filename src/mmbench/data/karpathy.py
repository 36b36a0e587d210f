"""Karpathy's caption splits (`dataset_coco.json`, `dataset_flickr30k.json`) + the image folder.

`{"images": [{"filepath"?, "filename", "imgid", "split": train|restval|val|test, "sentences": [{"raw", ...}]}]}`;
Flickr30K has no `filepath`. Options (`data.options.karpathy`): `annotation` (the JSON file name) and `image_dir`
(folder under the root that holds `<filepath>/<filename>`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from mmbench.data.base import Reader, Record, decode_image
from mmbench.data.columns import Codes, LazyRecords, StrColumn, require_files, stat_fingerprint
from mmbench.data.jsonfiles import iter_json_list
from mmbench.errors import DataError


class KarpathyReader(Reader):
    format = "karpathy"

    def __init__(self, root: Path, task) -> None:
        super().__init__(root, task)
        self._splits: dict[str, _KarpathySplit] = {}

    @property
    def annotation(self) -> Path:
        return self.root / self.options.get("annotation", f"dataset_{self.task.name}.json")

    @property
    def image_dir(self) -> Path:
        return self.root / self.options.get("image_dir", "")

    @classmethod
    def detect(cls, root: Path, task) -> bool:
        return cls(root, task).annotation.is_file()

    def expected(self) -> str:
        return f"{self.annotation} (Karpathy splits) and the images under {self.image_dir}/"

    def check(self, split: str) -> None:
        if not self.annotation.is_file():
            raise DataError(f"{self.annotation}: missing (expected {self.expected()})")
        if not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: image folder missing (expected {self.expected()})")
        images = [os.path.join(self.image_dir, rel) for rel in self._image_relpaths(split)]
        require_files(images, split, self.annotation.name)

    def fingerprint(self, split: str) -> str:
        """The annotation file and every image of the split (name, size, mtime): one `stat` per image (25k for
        COCO's Karpathy test + val), well under a second on a local disk."""
        base = self.image_dir.relative_to(self.root).as_posix()
        images = [f"{base}/{rel}" if base != "." else rel for rel in self._image_relpaths(split)]
        return stat_fingerprint(self.root, [self.annotation.relative_to(self.root).as_posix(), *images])

    def _image_relpaths(self, split: str) -> list[str]:
        index = self._index(split)
        return [_join(index.folder[i], index.filename[i]) for i in range(len(index.filename))]

    def _index(self, split: str) -> _KarpathySplit:
        """The split's images in file order (the annotation file is parsed one image entry at a time)."""
        if split in self._splits:
            return self._splits[split]
        index = _KarpathySplit()
        for i, entry in enumerate(iter_json_list(self.annotation, "images")):
            if not isinstance(entry, dict):
                raise DataError(f"{self.annotation}: images[{i}]: expected an object")
            for key in ("filename", "split", "sentences"):
                if key not in entry:
                    raise DataError(f"{self.annotation}: images[{i}]: missing key {key!r}")
            if entry["split"] != split:
                continue
            caps = _captions(entry["sentences"])
            if not caps or not all(caps):
                raise DataError(f"{self.annotation}: image {entry['filename']!r}: empty or missing 'raw' caption")
            index.filename.append(entry["filename"])
            index.folder.append(entry.get("filepath", ""))
            index.captions.append(json.dumps(caps, ensure_ascii=False))
        self._splits[split] = index
        return index

    def random_access(self, split: str, limit: int | None = None) -> Sequence[Record]:
        n = len(self._index(split).filename)
        return LazyRecords(n if limit is None else min(n, limit), partial(self._record, split))

    def sample_ref(self, split: str, i: int) -> dict[str, Any]:
        index = self._index(split)
        rel = _join(index.folder[i], index.filename[i])
        base = self.image_dir.relative_to(self.root).as_posix()
        return {"id": index.filename[i], "image": f"{base}/{rel}" if base != "." else rel}

    def _record(self, split: str, i: int) -> Record:
        index = self._splits[split]
        filename = index.filename[i]
        path = self.image_dir / index.folder[i] / filename
        captions = json.loads(index.captions[i])
        return {"index": i, "key": filename, "image": decode_image(path, str(path)), "captions": captions}


@dataclass
class _KarpathySplit:
    filename: StrColumn = field(default_factory=StrColumn)
    folder: Codes = field(default_factory=Codes)  # `filepath` (COCO's train2014/val2014), "" for Flickr30K
    captions: StrColumn = field(default_factory=StrColumn)  # JSON list


def _captions(sentences: object) -> list[str]:
    """The `raw` text of every sentence ("" where one is missing or not text)."""
    if not isinstance(sentences, list):
        return []
    raw = [s.get("raw") if isinstance(s, dict) else None for s in sentences]
    return [r.strip() if isinstance(r, str) else "" for r in raw]


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name
