"""GLUE in the Hugging Face `nyu-mll/glue` parquet layout: `<root>/<config>/<split>-NNNNN-of-NNNNN.parquet`.

Every config is one folder of the hub repo (`mnli/train-00000-of-00001.parquet`,
`mnli/validation_matched-00000-of-00001.parquet`, `mnli/validation_mismatched-...`, `cola/validation-...`), so a
local copy of the repo, or of a few of its folders, is the dataset root. Options (`data.options.glue`):

- `config`: the folder (`mnli`, `cola`, ...); `columns`: the text column and, for pairs, the second one;
- `label_range`: `[lo, hi]` for real-valued labels (STS-B: `[0, 5]`); otherwise labels are class ids
  `0 .. finetune.num_labels - 1`;
- `download` (default true): when the files are absent and the hub is reachable (HF_HUB_OFFLINE unset), fetch the
  config's folder with `huggingface_hub.snapshot_download` into the root; offline the run stops with the
  missing-dataset message.

Records: `{"index", "key" (the `idx` column), "text", "text_pair", "image": None, "label"}`; GLUE's hidden test
labels (-1) become `label=None`. A missing column, an unreadable file or a label outside the label set is one
`DataError` naming the file, and the row.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mmbench.data.base import Reader, Record
from mmbench.data.columns import LazyRecords, stat_fingerprint
from mmbench.errors import DataError
from mmbench.schema import TaskConfig

log = logging.getLogger("mmbench")
HUB_REPO = "nyu-mll/glue"
UNLABELLED = -1  # GLUE's test splits


def hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return True
    return bool(constants.HF_HUB_OFFLINE)


class GlueReader(Reader):
    format = "glue"

    def __init__(self, root: Path, task: TaskConfig) -> None:
        super().__init__(root, task)
        self._parts: dict[str, list[_Part]] = {}

    @property
    def config(self) -> str:
        return str(self.options.get("config", self.task.name))

    @property
    def columns(self) -> list[str]:
        cols = [str(c) for c in self.options.get("columns", ["sentence"])]
        if not 1 <= len(cols) <= 2:
            raise DataError(f"task {self.task.name!r}: data.options.glue.columns must name 1 or 2 text columns")
        return cols

    @property
    def label_range(self) -> tuple[float, float] | None:
        lr = self.options.get("label_range")
        return (float(lr[0]), float(lr[1])) if lr is not None else None

    def files(self, split: str) -> list[Path]:
        return sorted((self.root / self.config).glob(f"{split}-*.parquet"))

    @classmethod
    def detect(cls, root: Path, task: TaskConfig) -> bool:
        reader = cls(root, task)
        if reader.files(task.data.split):
            return True
        if reader.options.get("download", True) and not hub_offline():
            reader.download()
        return bool(reader.files(task.data.split))

    def download(self) -> None:
        """Fetch this config's folder of the hub repo into the root (a failure leaves the missing-data path)."""
        try:
            from huggingface_hub import snapshot_download

            log.info("fetching %s/%s from the Hugging Face hub into %s", HUB_REPO, self.config, self.root)
            snapshot_download(
                repo_id=HUB_REPO, repo_type="dataset", allow_patterns=[f"{self.config}/*"], local_dir=self.root
            )
        except Exception as e:  # network, auth, disk: the caller reports the dataset as missing
            log.warning("could not fetch %s/%s: %s", HUB_REPO, self.config, str(e).splitlines()[0] if str(e) else e)

    def expected(self) -> str:
        how = "HF_HUB_OFFLINE is set, so it is not fetched" if hub_offline() else "fetched when the hub is reachable"
        return (
            f"{self.root / self.config}/{self.task.data.split}-00000-of-00001.parquet and the other splits "
            f"(the Hugging Face {HUB_REPO} parquet layout; {how})"
        )

    def check(self, split: str) -> None:
        files = self.files(split)
        if not files:
            have = sorted({p.name.split("-")[0] for p in (self.root / self.config).glob("*.parquet")})
            raise DataError(
                f"{self.root / self.config}: no {split}-*.parquet file (splits present: {', '.join(have) or 'none'})"
            )
        for path in files:
            self._check_columns(path, _schema_names(path))
        self._index(split)  # every row's text and label

    def _check_columns(self, path: Path, names: list[str]) -> None:
        for col in [*self.columns, "label"]:
            if col not in names:
                raise DataError(f"{path}: no column {col!r} (columns: {', '.join(names)})")

    def fingerprint(self, split: str) -> str:
        """The split's parquet files (name, size, mtime)."""
        return stat_fingerprint(self.root, [p.relative_to(self.root).as_posix() for p in self._files_or_error(split)])

    def _files_or_error(self, split: str) -> list[Path]:
        if not self.files(split):
            self.check(split)
        return self.files(split)

    def random_access(self, split: str, limit: int | None = None) -> Sequence[Record]:
        parts = self._index(split)
        n = parts[-1].start + parts[-1].table.num_rows if parts else 0
        return LazyRecords(n if limit is None else min(n, limit), partial(self._record, split))

    def sample_ref(self, split: str, i: int) -> dict[str, Any]:
        self._index(split)
        rec = self._record(split, i)  # text columns only: nothing to decode
        pair = {"text_pair": rec["text_pair"]} if rec["text_pair"] is not None else {}
        return {"id": rec["key"], "text": rec["text"], **pair}

    def _index(self, split: str) -> list[_Part]:
        """The split's files as Arrow tables (text in Arrow buffers: the text itself plus a few bytes a row),
        every row checked when loaded, so a bad row stops the run before its first step."""
        if split not in self._parts:
            parts, start = [], 0
            for path in self._files_or_error(split):
                table = self._read(path)
                parts.append(_Part(path, table, start))
                start += table.num_rows
            self._parts[split] = parts
        return self._parts[split]

    def _read(self, path: Path) -> Any:
        import pyarrow.parquet as pq

        names = _schema_names(path)
        self._check_columns(path, names)
        wanted = [*self.columns, "label"] + (["idx"] if "idx" in names else [])
        try:
            table = pq.read_table(path, columns=wanted)
        except Exception as e:  # pyarrow raises several types for a truncated or corrupt file
            raise DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
        for col in self.columns:
            if not _is_string(table.column(col).type) or table.column(col).null_count:
                values = table.column(col).to_pylist()
                row = next(i for i, v in enumerate(values) if not isinstance(v, str))
                key = table.column("idx")[row].as_py() if "idx" in wanted else row
                raise DataError(f"{path}: row {row} (idx {key}): column {col!r} holds {values[row]!r}, not a string")
        for row, value in enumerate(table.column("label").to_pylist()):
            key = table.column("idx")[row].as_py() if "idx" in wanted else row
            self._label(value, f"{path}: row {row} (idx {key})")
        return table

    def _record(self, split: str, i: int) -> Record:
        parts = self._parts[split]
        part = parts[bisect.bisect_right([p.start for p in parts], i) - 1]
        row, table = i - part.start, part.table
        pair = self.columns[1] if len(self.columns) == 2 else None
        where = f"{part.path}: row {row}"
        return {
            "index": i,
            "key": table.column("idx")[row].as_py() if "idx" in table.column_names else row,
            "text": table.column(self.columns[0])[row].as_py(),
            "text_pair": table.column(pair)[row].as_py() if pair else None,
            "image": None,
            "label": self._label(table.column("label")[row].as_py(), where),
        }

    def _label(self, value: Any, where: str) -> int | float | None:
        if value is None or value == UNLABELLED:
            return None
        bounds = self.label_range
        if bounds is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise DataError(f"{where}: label {value!r} is not a number")
            if not bounds[0] <= value <= bounds[1]:
                raise DataError(f"{where}: label {value!r} is outside [{bounds[0]:g}, {bounds[1]:g}]")
            return float(value)
        n = self.task.finetune.num_labels
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
            raise DataError(f"{where}: label {value!r} is not a class id in 0..{n - 1}")
        return int(value)


@dataclass
class _Part:
    path: Path
    table: Any  # pyarrow.Table: the text columns, label and idx
    start: int  # index of its first row in the split


def _is_string(kind: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _schema_names(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as e:
        raise DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
