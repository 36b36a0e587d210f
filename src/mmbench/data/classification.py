"""What the two classification formats (`wds_classification`, `image_folder`) share: the class list, label checks,
and the split fingerprint the linear probe's feature cache is keyed by.

A split fingerprint names every file of the split with its size and modification time (not its content): hashing
content would mean reading the whole dataset, which is what the cache exists to avoid (ImageNet train is ~140 GB),
while (name, size, mtime) changes whenever a shard or image is rewritten, replaced, added or removed -- the rule
`make` and rsync rely on. The class list file is hashed by content (it is small and decides every label).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from mmbench.errors import DataError

CLASSNAMES_FILE = "classnames.txt"


def read_classnames(path: Path) -> list[str]:
    """One class per line, in label order (line i = label i). Never sorted: CLEVR's "10" must follow "9"."""
    if not path.is_file():
        raise DataError(f"{path}: missing (one class name per line, line i = label i)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names:
        raise DataError(f"{path}: no class names")
    empty = [i + 1 for i, name in enumerate(names) if not name]
    if empty:
        raise DataError(f"{path}: line {empty[0]} is empty (every line is one class, line i = label i)")
    return names


def parse_label(raw: bytes | None, where: str, n_classes: int) -> int:
    """A `cls` member (ASCII integer) checked against the class list; errors name the shard and key."""
    if raw is None:
        raise DataError(f"{where}: no .cls member with the label")
    try:
        label = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{where}.cls: expected an ASCII integer label, got {raw[:20]!r}") from None
    return check_label(label, where, n_classes)


def check_label(label: int, where: str, n_classes: int) -> int:
    if not 0 <= label < n_classes:
        raise DataError(f"{where}: label {label} is outside the {n_classes} classes of {CLASSNAMES_FILE}")
    return label


def files_fingerprint(files: Iterable[Path], base: Path, extra: bytes = b"") -> str:
    """sha256 over (path relative to `base`, size, mtime_ns) of every file, in the order given, plus `extra`."""
    h = hashlib.sha256()
    for path in files:
        st = os.stat(path)
        h.update(f"{path.relative_to(base).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    h.update(extra)
    return "sha256:" + h.hexdigest()


def file_digest(path: Path) -> bytes:
    """Content hash of a small file (class lists, shard counts); empty when the file is absent."""
    return hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b""
