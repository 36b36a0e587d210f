"""Tests never touch the network, and keep caches out of the user's home."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models do tiny matmuls: one thread per process is fastest, and keeps the 2-process DDP tests (and CI
# machines with 2 cores) free of OpenMP threads spinning against each other. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from mmbench.config import Registry  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Session-scoped so that it is in place before any module- or session-scoped fixture runs a model."""
    base = tmp_path_factory.getbasetemp()
    saved = {k: os.environ.get(k) for k in ("MMBENCH_CACHE", "MMBENCH_DATA")}
    os.environ["MMBENCH_CACHE"] = str(base / "mmbench-cache")
    os.environ["MMBENCH_DATA"] = str(base / "no-data-here")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
