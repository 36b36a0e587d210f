"""Karpathy's caption splits (`dataset_coco.json`, `dataset_flickr30k.json`) + the image folder.

`{"images": [{"filepath"?, "filename", "imgid", "split": train|restval|val|test, "sentences": [{"raw", ...}]}]}`;
Flickr30K has no `filepath`. Options (`data.options.karpathy`): `annotation` (the JSON file name) and `image_dir`
(folder under the root that holds `<filepath>/<filename>`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mmbench.data.base import Reader, decode_image
from mmbench.errors import DataError


class KarpathyReader(Reader):
    format = "karpathy"

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

    def _entries(self, split: str) -> list[dict]:
        try:
            data = json.loads(self.annotation.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{self.annotation}: not valid JSON ({e})") from None
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise DataError(f"{self.annotation}: key 'images': expected a list of image entries")
        out = []
        for i, entry in enumerate(images):
            for key in ("filename", "split", "sentences"):
                if key not in entry:
                    raise DataError(f"{self.annotation}: images[{i}]: missing key {key!r}")
            if entry["split"] == split:
                out.append(entry)
        return out

    def samples(self, split: str, limit: int | None = None, keep: Callable[[int], bool] | None = None):
        entries = self._entries(split)
        for index, entry in enumerate(entries[:limit] if limit is not None else entries):
            if keep is not None and not keep(index):
                continue
            caps = [s.get("raw", "").strip() for s in entry["sentences"]]
            if not caps or not all(caps):
                raise DataError(f"{self.annotation}: image {entry['filename']!r}: empty or missing 'raw' caption")
            path = self.image_dir / entry.get("filepath", "") / entry["filename"]
            yield {"index": index, "key": entry["filename"], "image": decode_image(path, str(path)), "captions": caps}
