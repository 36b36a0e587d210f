"""Hateful Memes (Facebook AI, 2020) in the challenge's layout: JSON-lines splits + the `img/` folder.

```
<root>/{train,dev_seen,dev_unseen,test_seen,test_unseen}.jsonl   {"id": 42953, "img": "img/42953.png",
                                                                   "label": 0, "text": "..."}
<root>/img/42953.png
```
`text` is the meme's overlaid text; `label` 1 = hateful, absent in the unlabelled test files (record label None).
`img` is relative to the root (option `image_root` moves it). Options (`data.options.hateful_memes`): `file`,
`image_root`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmbench.data.jsonfiles import JsonlReader, require

LABELS = ("not hateful", "hateful")


class HatefulMemesReader(JsonlReader):
    format = "hateful_memes"
    dataset_name = "Hateful Memes"
    label_names = LABELS
    default_options = {"file": "{split}.jsonl", "image_root": ""}

    def image_folder(self) -> Path:
        return self.root / self.options["image_root"] / "img"

    def expected(self) -> str:
        split_file = self.split_file(self.task.data.split)
        return f"{split_file} (Hateful Memes JSON lines) and the images in {self.image_folder()}/"

    def parse(self, obj: dict[str, Any], where: str) -> tuple[str, str, int | None]:
        require(obj, "id", (int, str), where)
        image = require(obj, "img", str, where)
        text = require(obj, "text", str, where)
        label = self.label(obj["label"], "label", where) if obj.get("label") is not None else None
        return text, str(Path(self.options["image_root"]) / image), label
