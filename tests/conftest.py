"""Tests never touch the network, and keep caches out of the user's home."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from mmbench.config import Registry  # noqa: E402


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MMBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "mmbench-cache"))
    monkeypatch.setenv("MMBENCH_DATA", str(tmp_path_factory.getbasetemp() / "no-data-here"))
