"""Compact per-split indexes: what a reader keeps per sample, so that a split of 500k records costs tens of MB.

A Python `str` costs 49 bytes plus its text, a dict of nine fields ~650 bytes, a `Path` ~500; a list of 500k
annotation dicts (VQAv2's, with ten answer dicts each) ~2 GB. So readers keep columns instead: text packed into one
UTF-8 buffer with an offsets array (`StrColumn`), repeated values as small codes (`Codes`), numbers in `array`s.
These are also the right shape for DataLoader workers: a forked worker that reads a Python object writes its
reference count and so copies the memory page it sits on; one big buffer has one reference count.

`LazyRecords` is what `Reader.random_access` returns: a sequence whose item i is built -- and its image decoded --
only when it is accessed, i.e. in the loader worker that asks for it.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mmbench.errors import DataError

Record = dict[str, Any]


class StrColumn:
    """Strings packed into one UTF-8 buffer: item i costs its bytes plus 8 (an end offset)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ends = array("q")

    def append(self, text: str) -> None:
        self._buf += text.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._buf))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        start = self._ends[i - 1] if i > 0 else 0
        return self._buf[start : self._ends[i]].decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def nbytes(self) -> int:
        return len(self._buf) + self._ends.itemsize * len(self._ends)


class Codes:
    """A column of values drawn from a small set (image paths shared by many questions, answer types): item i is
    `values[codes[i]]`; `values` lists each distinct value once, in order of first appearance."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._code: dict[Any, int] = {}
        self.codes = array("l")

    def append(self, value: Any) -> None:
        self.codes.append(self.code(value))

    def code(self, value: Any) -> int:
        code = self._code.get(value)
        if code is None:
            code = self._code[value] = len(self.values)
            self.values.append(value)
        return code

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> Any:
        return self.values[self.codes[i]]

    def nbytes(self) -> int:
        return self.codes.itemsize * len(self.codes)


class LazyRecords(Sequence[Record]):
    """Records 0 .. n-1 of a split; item i is `record(i)`, built on access (nothing is decoded before)."""

    def __init__(self, n: int, record: Callable[[int], Record]):
        self.n, self.record = n, record

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]  # int -> Record, slice -> list[Record]
        if isinstance(i, slice):
            return [self.record(j) for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"record {i} of {self.n}")
        return self.record(i)


def missing_files(paths: Iterable[str]) -> tuple[str | None, int, int]:
    """(first missing path, how many are missing, how many were checked) of `paths`, distinct absolute paths.

    One directory listing per folder instead of one `stat` per file: a folder of 82k COCO images is listed in
    ~50 ms, while 82k stats cost more and far more on network file systems. A name absent from its folder's
    listing is confirmed with `os.path.exists` (case-insensitive file systems list the stored spelling)."""
    listings: dict[str, set[str] | None] = {}
    first, missing, total = None, 0, 0
    for path in paths:
        total += 1
        folder, name = os.path.split(path)
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder))
            except OSError:
                listings[folder] = None
        names = listings[folder]
        if names is not None and name in names or os.path.exists(path):
            continue
        missing += 1
        first = first or path
    return first, missing, total


def stat_fingerprint(base: Path, relpaths: Iterable[str], extra: bytes = b"") -> str:
    """sha256 over (path relative to `base`, size, mtime_ns) of every file, in the order given, plus `extra` --
    the same digest as `mmbench.data.classification.files_fingerprint`, from relative path strings."""
    import hashlib

    h = hashlib.sha256()
    root = str(base)
    for rel in relpaths:
        path = os.path.join(root, rel)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DataError(f"{path}: missing") from None
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    h.update(extra)
    return "sha256:" + h.hexdigest()


def require_files(paths: list[str], split: str, referrer: str, kind: str = "image") -> None:
    """One `DataError` line naming the first of `paths` that is missing and how many are."""
    first, missing, total = missing_files(paths)
    if first is not None:
        raise DataError(
            f"{first}: {kind} file missing ({missing} of the {total} {kind} files that split {split!r} "
            f"({referrer}) refers to are missing)"
        )
