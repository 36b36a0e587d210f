"""JSON and JSON-lines annotation files of the multimodal datasets (errors name file and line), and the reader
shared by the JSON-lines formats (SNLI-VE, Hateful Memes)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from mmbench.data.base import Reader, Record, decode_image
from mmbench.errors import ConfigError, DataError


def read_json(path: Path, key: str) -> list[Any]:
    """The list under `key` of a JSON object file (`{"questions": [...]}`); one-line errors name the file."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DataError(f"{path}: key {key!r}: expected a list")
    return items


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a bad line is an error naming `path:line`."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        out.append((lineno, obj))
    return out


def require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`obj[key]`, checked to be of `kind`; the error names `where` and the key."""
    if key not in obj:
        raise DataError(f"{where}: missing key {key!r}")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # True is an int in Python
        names = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: key {key!r}: expected {names}, got {str(value)[:60]!r}")
    return value


class JsonlReader(Reader):
    """A split = one JSON-lines file of (text, image file, label) records; the image files sit under the root.

    Subclasses set `default_options` (at least `file`, the split file's name pattern) and `label_names`, and
    implement `parse(obj, where) -> (text, image path relative to the root, label index or None)`."""

    default_options: ClassVar[dict[str, Any]] = {}
    label_names: ClassVar[tuple[str, ...]] = ()
    dataset_name: ClassVar[str] = ""

    def __init__(self, root: Path, task):
        super().__init__(root, task)
        unknown = sorted(set(self.options) - set(self.default_options))
        if unknown:
            raise ConfigError(
                f"task {task.name!r}: key 'data.options.{self.format}.{unknown[0]}': unknown option "
                f"(known: {', '.join(self.default_options)})"
            )
        self.options = {**self.default_options, **self.options}
        self._entries_cache: dict[str, list[tuple[int, str, str, int | None]]] = {}

    def split_file(self, split: str) -> Path:
        return self.root / self.options["file"].format(split=split)

    def image_folder(self) -> Path:
        raise NotImplementedError

    def parse(self, obj: dict[str, Any], where: str) -> tuple[str, str, int | None]:
        raise NotImplementedError

    @classmethod
    def detect(cls, root: Path, task) -> bool:
        reader = cls(root, task)
        return reader.split_file(task.data.split).is_file() and reader.image_folder().is_dir()

    def check(self, split: str) -> None:
        if not self.split_file(split).is_file():
            raise DataError(f"{self.split_file(split)}: missing (expected {self.expected()})")
        if not self.image_folder().is_dir():
            raise DataError(f"{self.image_folder()}: image folder missing (expected {self.expected()})")

    def label(self, value: Any, key: str, where: str) -> int:
        """The index of `value` in `label_names` (given as a name or as an index)."""
        if isinstance(value, str) and value in self.label_names:
            return self.label_names.index(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.label_names):
            return value
        allowed = ", ".join(f"{i} ({n})" for i, n in enumerate(self.label_names))
        raise DataError(f"{where}: key {key!r}: {value!r} is not a {self.dataset_name} label (one of {allowed})")

    def _entries(self, split: str) -> list[tuple[int, str, str, int | None]]:
        if split not in self._entries_cache:
            path = self.split_file(split)
            self._entries_cache[split] = [
                (lineno, *self.parse(obj, f"{path}:{lineno}")) for lineno, obj in read_jsonl(path)
            ]
        return self._entries_cache[split]

    def samples(
        self, split: str, limit: int | None = None, keep: Callable[[int], bool] | None = None
    ) -> Iterator[Record]:
        entries = self._entries(split)
        name = self.split_file(split).name
        for index, (lineno, text, image, label) in enumerate(entries[:limit] if limit is not None else entries):
            if keep is not None and not keep(index):
                continue
            path = self.root / image
            yield {
                "index": index,
                "text": text,
                "text_pair": None,
                "image": decode_image(path, f"{path} ({name}:{lineno})"),
                "label": label,
            }
