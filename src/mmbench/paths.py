"""Where mmbench keeps things on disk. One place, so that every part agrees (and tests can redirect it all)."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
