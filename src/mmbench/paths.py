"""Where mmbench keeps things on disk. One place, so that every part agrees (and tests can redirect it all)."""

from __future__ import annotations

import os
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
