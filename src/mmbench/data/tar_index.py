"""Random access into WebDataset shards: an index of member offsets, built by reading the tar headers only.

A sample is the run of consecutive regular members sharing a key, as `webdataset` groups them: the key is the
member path up to the first dot of its file name, the rest (lower-cased) is the field (`s0000042.webp` -> key
`s0000042`, field `webp`); names without a dot and `__meta__`-style names are skipped, a repeated field within a
sample is an error. Per sample the index keeps the key and, per member, the field code, data offset and size
(~60 bytes a sample), so a member is read back with one seek and one read.

A shard must end with a complete tar end-of-archive (two zero blocks after the last member). Python's `tarfile`
stops quietly at a short or garbled header, so a shard cut by an interrupted download would otherwise read as a
smaller dataset: the scan checks the end marker and the last member's extent, and names the shard.
"""

from __future__ import annotations

import os
import re
import tarfile
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from mmbench.data.columns import Codes, StrColumn
from mmbench.errors import DataError

BLOCK = 512
END_OF_ARCHIVE = 2 * BLOCK
_KEY_FIELD = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's `base_plus_ext`
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's default `skip_meta`
REFETCH = "an interrupted download or copy? fetch the shard again"


@dataclass
class ShardIndex:
    path: Path
    keys: StrColumn = field(default_factory=StrColumn)
    first: array = field(default_factory=lambda: array("q", [0]))  # sample s = members first[s] .. first[s+1]-1
    fields: array = field(default_factory=lambda: array("B"))  # code into the reader's field names
    offsets: array = field(default_factory=lambda: array("q"))
    sizes: array = field(default_factory=lambda: array("q"))

    def __len__(self) -> int:
        return len(self.keys)

    def members(self, s: int, names: Codes) -> dict[str, bytes]:
        """Sample `s` as {field: bytes}, read with one seek and read per member."""
        out = {}
        with open(self.path, "rb") as f:
            for m in range(self.first[s], self.first[s + 1]):
                f.seek(self.offsets[m])
                data = f.read(self.sizes[m])
                if len(data) != self.sizes[m]:
                    raise DataError(f"{self.path}: truncated shard: member data ends early ({REFETCH})")
                out[names.values[self.fields[m]]] = data
        return out


def scan_shard(path: Path, names: Codes) -> ShardIndex:
    """Index every sample of a shard from its headers; `names` collects the field names (codes shared by shards)."""
    index, size = ShardIndex(path), os.path.getsize(path)
    last_key, last_name, n_members = None, None, 0
    seen: set[str] = set()
    with open(path, "rb") as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
            while (info := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every TarInfo otherwise
                n_members += 1
                last_name = info.name
                if info.offset_data + info.size > size:
                    raise DataError(
                        f"{path}: truncated shard: member {info.name!r} needs {info.offset_data + info.size} bytes "
                        f"but the file has {size} ({REFETCH})"
                    )
                match = _KEY_FIELD.match(info.name)
                if not info.isreg() or match is None or _META.match(info.name):
                    continue
                key, name = match.group(1), match.group(2).lower()
                if key != last_key:
                    if last_key is not None:
                        index.first.append(len(index.offsets))
                    index.keys.append(key)
                    last_key, seen = key, set()
                elif name in seen:
                    raise DataError(f"{path}: member {info.name!r}: a second .{name} for key {key!r}")
                seen.add(name)
                index.fields.append(names.code(name))
                index.offsets.append(info.offset_data)
                index.sizes.append(info.size)
            end = tar.offset
        except tarfile.ReadError as e:
            after = f" after member {last_name!r}" if last_name else ""
            raise DataError(f"{path}: truncated or corrupt shard ({e}{after}; {REFETCH})") from None
        if last_key is not None:
            index.first.append(len(index.offsets))
        f.seek(end)
        tail = f.read(END_OF_ARCHIVE)
    if tail != bytes(END_OF_ARCHIVE):
        after = f" after member {last_name!r}" if last_name else ""
        if end + END_OF_ARCHIVE > size:
            what = f"no complete tar end-of-archive{after} (the file stops at byte {size})"
        else:
            what = f"the member stream stops{after} at byte {end} of {size} (unreadable tar header)"
        raise DataError(f"{path}: truncated shard: {what}; {n_members} members read ({REFETCH})")
    return index


def check_shard_end(path: Path) -> None:
    """Cheap check that a shard ends like a complete tar (whole blocks, two zero blocks last): one read of
    1 KB. `scan_shard` checks the member stream itself when the shard is read."""
    size = os.path.getsize(path)
    if size % BLOCK or size < END_OF_ARCHIVE:
        raise DataError(
            f"{path}: truncated shard: {size} bytes is not a whole number of 512-byte tar blocks ({REFETCH})"
        )
    with open(path, "rb") as f:
        f.seek(size - END_OF_ARCHIVE)
        if f.read(END_OF_ARCHIVE) != bytes(END_OF_ARCHIVE):
            raise DataError(f"{path}: truncated shard: no tar end-of-archive (two zero blocks) at its end ({REFETCH})")
