"""SNLI-VE (visual entailment): the SNLI hypotheses about Flickr30K images, in the release's JSON-lines files.

```
<root>/snli_ve_{train,dev,test}.jsonl    {"gold_label": "entailment"|"neutral"|"contradiction", "sentence2": ...,
                                          "sentence1": ..., "pairID": ..., "Flikr30kID": "3416050480", ...}
<root>/flickr30k_images/<id>.jpg
```
The premise is the image; `sentence1` (the SNLI caption) is not used. The image key is spelled `Flikr30kID` in the
original release and `Flickr30K_ID` in some re-packagings: both are accepted, and a trailing `.jpg` is dropped.
Labels follow MNLI's order: 0 entailment, 1 neutral, 2 contradiction. Lines without consensus ("-") were removed
by the SNLI-VE authors, so any other label is an error. Options (`data.options.snli_ve`): `file`, `image_path`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmbench.data.jsonfiles import JsonlReader, require
from mmbench.errors import DataError

LABELS = ("entailment", "neutral", "contradiction")
ID_KEYS = ("Flikr30kID", "Flickr30K_ID")


class SnliVeReader(JsonlReader):
    format = "snli_ve"
    dataset_name = "SNLI-VE"
    label_names = LABELS
    default_options = {"file": "snli_ve_{split}.jsonl", "image_path": "flickr30k_images/{image_id}.jpg"}

    def image_folder(self) -> Path:
        return (self.root / self.options["image_path"].format(image_id="x")).parent

    def expected(self) -> str:
        example = self.options["image_path"].format(image_id="<Flikr30kID>")
        split_file = self.split_file(self.task.data.split)
        return f"{split_file} (SNLI-VE JSON lines) and the Flickr30K images as {self.root}/{example}"

    def parse(self, obj: dict[str, Any], where: str) -> tuple[str, str, int | None]:
        key = next((k for k in ID_KEYS if k in obj), None)
        if key is None:
            raise DataError(f"{where}: missing key {ID_KEYS[0]!r} (or {ID_KEYS[1]!r}) with the Flickr30K image id")
        image_id = str(require(obj, key, (str, int), where)).strip()
        image_id = image_id[: -len(".jpg")] if image_id.endswith(".jpg") else image_id
        if not image_id:
            raise DataError(f"{where}: key {key!r}: empty image id")
        text = require(obj, "sentence2", str, where)
        label = self.label(obj["gold_label"], "gold_label", where) if "gold_label" in obj else None
        return text, self.options["image_path"].format(image_id=image_id), label
