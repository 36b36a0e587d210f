"""JSON and JSON-lines annotation files of the multimodal datasets (errors name file and line), and the reader
shared by the JSON-lines formats (SNLI-VE, Hateful Memes)."""

from __future__ import annotations

import json
import os
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TextIO

from mmbench.data.base import Reader, Record, decode_image
from mmbench.data.columns import Codes, LazyRecords, StrColumn, require_files, stat_fingerprint
from mmbench.errors import ConfigError, DataError

_WHITESPACE = re.compile(r"[ \t\n\r]*")


class _JsonText:
    """A JSON file read in chunks and decoded one value at a time (`json.JSONDecoder.raw_decode`), so that the
    items of a large list are parsed one by one, never all at once."""

    def __init__(self, f: TextIO, path: Path, chunk: int = 1 << 20):
        self.f, self.path, self.chunk = f, path, chunk
        self.buf, self.pos, self.consumed, self.eof = "", 0, 0, False
        self.decoder = json.JSONDecoder()

    def _read_more(self, at_least: int = 0) -> bool:
        if self.eof:
            return False
        if self.pos > self.chunk:  # drop the consumed text
            self.consumed += self.pos
            self.buf, self.pos = self.buf[self.pos :], 0
        data = self.f.read(max(self.chunk, at_least))
        self.eof = not data
        self.buf += data
        return bool(data)

    def fail(self, msg: str, at: int | None = None) -> NoReturn:
        """`at`: the character offset in the file (default: the current position)."""
        at = self.consumed + self.pos if at is None else at
        raise DataError(f"{self.path}: not valid JSON ({msg} at character {at})")

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end of the file); consumes the whitespace."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._read_more():
                return ""

    def take(self, allowed: str) -> str:
        c = self.peek()
        if not c or c not in allowed:
            self.fail(f"expected {' or '.join(repr(a) for a in allowed)}")
        self.pos += 1
        return c

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                at = self.consumed + e.pos  # before reading more moves the buffer
                if self._read_more(len(self.buf)):  # the value may go on past the buffer (doubling: linear time)
                    continue
                self.fail(e.msg, at)
            if end == len(self.buf) and self._read_more(len(self.buf)):
                continue  # a number or literal at the end of the buffer may be cut short: decode it again
            self.pos = end
            return obj

    def items_of(self, key: str) -> Iterator[Any]:
        """The items of the list under `key` of the top-level object, one at a time; then checks the rest."""
        if self.peek() != "{":
            self.value()
            raise DataError(f"{self.path}: key {key!r}: expected a list (the file is not a JSON object)")
        self.pos += 1
        found = False
        if self.peek() == "}":
            self.pos += 1
        else:
            while True:
                name = self.value()
                if not isinstance(name, str):
                    self.fail("expected a key string")
                self.take(":")
                if name == key and not found and self.peek() == "[":
                    found = True
                    self.pos += 1
                    if self.peek() == "]":
                        self.pos += 1
                    else:
                        while True:
                            yield self.value()
                            if self.take(",]") == "]":
                                break
                else:
                    self.value()
                if self.take(",}") == "}":
                    break
        if self.peek():
            self.fail("extra data after the object")
        if not found:
            raise DataError(f"{self.path}: key {key!r}: expected a list")


def iter_json_list(path: Path, key: str, chunk: int = 1 << 20) -> Iterator[Any]:
    """The items of the list under `key` of a JSON object file (`{"questions": [...]}`), parsed one at a time:
    VQAv2's train annotations are 330 MB of JSON, ~3 GB as Python objects when loaded whole. One-line errors name
    the file (and the character offset)."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        with open(path, encoding="utf-8") as f:
            yield from _JsonText(f, path, chunk).items_of(key)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line, read line by line; a bad line is an error naming
    `path:line`."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


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


@dataclass
class _JsonlSplit:
    """A split's compact index (~80 bytes a record plus its text)."""

    lineno: array = field(default_factory=lambda: array("l"))
    text: StrColumn = field(default_factory=StrColumn)
    image: Codes = field(default_factory=Codes)  # image path relative to the root, each distinct path once
    label: array = field(default_factory=lambda: array("b"))  # label index, -1 = unlabelled


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
        self._splits: dict[str, _JsonlSplit] = {}

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
        images = self._index(split).image.values
        require_files([os.path.join(self.root, p) for p in images], split, self.split_file(split).name)

    def fingerprint(self, split: str) -> str:
        """The split file and every image it names (name, size, mtime): one `stat` per distinct image, ~0.3 s for
        100k on a local disk -- cheap beside a fine-tuning run, and the only way a replaced image is noticed."""
        split_file = self.split_file(split).relative_to(self.root).as_posix()
        return stat_fingerprint(self.root, [split_file, *self._index(split).image.values])

    def label(self, value: Any, key: str, where: str) -> int:
        """The index of `value` in `label_names` (given as a name or as an index)."""
        if isinstance(value, str) and value in self.label_names:
            return self.label_names.index(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.label_names):
            return value
        allowed = ", ".join(f"{i} ({n})" for i, n in enumerate(self.label_names))
        raise DataError(f"{where}: key {key!r}: {value!r} is not a {self.dataset_name} label (one of {allowed})")

    def _index(self, split: str) -> _JsonlSplit:
        if split not in self._splits:
            path, index = self.split_file(split), _JsonlSplit()
            for lineno, obj in iter_jsonl(path):
                text, image, label = self.parse(obj, f"{path}:{lineno}")
                index.lineno.append(lineno)
                index.text.append(text)
                index.image.append(image)
                index.label.append(-1 if label is None else label)
            self._splits[split] = index
        return self._splits[split]

    def random_access(self, split: str, limit: int | None = None) -> Sequence[Record]:
        n = len(self._index(split).lineno)
        return LazyRecords(n if limit is None else min(n, limit), partial(self._record, split))

    def sample_ref(self, split: str, i: int) -> dict[str, Any]:
        """`id`: `<split file>:<line>` (the files carry no common id field)."""
        index = self._index(split)
        where = f"{self.split_file(split).name}:{index.lineno[i]}"
        return {"id": where, "image": index.image[i], "text": index.text[i]}

    def _record(self, split: str, i: int) -> Record:
        index = self._splits[split]
        path = self.root / index.image[i]
        label = index.label[i]
        return {
            "index": i,
            "text": index.text[i],
            "text_pair": None,
            "image": decode_image(path, f"{path} ({self.split_file(split).name}:{index.lineno[i]})"),
            "label": None if label < 0 else label,
        }
