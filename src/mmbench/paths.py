"""Where mmbench keeps things on disk. One place, so that every part agrees (and tests can redirect it all)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """Features, synthetic datasets, fine-tuning run folders, downloaded checkpoints and generated tokenizers:
    `$MMBENCH_CACHE`, default `~/.cache/mmbench` (`mmbench run --cache-dir` sets the variable)."""
    return Path(os.environ.get("MMBENCH_CACHE") or "~/.cache/mmbench").expanduser()


def checkpoint_download_dir() -> Path:
    """Release-URL checkpoints (BEiT-3), downloaded once."""
    return cache_dir() / "checkpoints"


def data_dir() -> Path:
    """Real datasets, one folder per task: `$MMBENCH_DATA`, default `~/.cache/mmbench/data`."""
    return Path(os.environ.get("MMBENCH_DATA") or "~/.cache/mmbench/data").expanduser()


@contextmanager
def cache_override(path: str | Path | None) -> Iterator[None]:
    """Point `cache_dir()` at `path` while the block runs (nothing changes when `path` is None)."""
    if path is None:
        yield
        return
    saved = os.environ.get("MMBENCH_CACHE")
    os.environ["MMBENCH_CACHE"] = str(Path(path).expanduser().resolve())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MMBENCH_CACHE", None)
        else:
            os.environ["MMBENCH_CACHE"] = saved


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Produce `path` by `write(tmp)` on a hidden temporary file in the same folder, then `os.replace`: a reader
    (another rank, a later run) never sees half a file, and a write that fails leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of text, with "\\n" line ends on every platform (committed files diff cleanly)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, newline=""))
