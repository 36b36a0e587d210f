"""The feature cache under real faults: a disk that fills mid-write (RLIMIT_FSIZE: the kernel refuses the bytes, as
on a full disk or quota), a cache folder that cannot exist, a damaged entry and a malicious pickle as an entry.
The evaluation always finishes with the numbers of a healthy run; the cache is warned about, or repaired."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmbench
from mmbench.data import synthetic
from mmbench.lit.trainer import TrainerOptions
from mmbench.models import build_model
from mmbench.protocols import RunContext, linear_probe
from mmbench.protocols.features import FeatureCache, SplitFeatures
from mmbench.results.store import result_path

resource = pytest.importorskip("resource")  # RLIMIT_FSIZE: POSIX
# 300 train samples: a 40 KB feature entry, bigger than the ~8 KB result JSON (the CLI test caps files between)
SMALL = {"data": {"synthetic": {"n_train": 300, "n_val": 12, "samples_per_shard": 64}}}


@pytest.fixture(scope="module")
def flowers(tmp_path_factory, registry):
    return synthetic.write(registry.task("flowers102", SMALL), tmp_path_factory.mktemp("d") / "flowers102", n=10)


@pytest.fixture(scope="module")
def factory(registry):
    model = build_model(registry.model("clip-tiny"))
    return lambda cfg, fresh=False: model


@pytest.fixture(scope="module")
def healthy(registry, flowers, factory, tmp_path_factory):
    """(output, cache folder) of a run with a working cache."""
    cache = tmp_path_factory.mktemp("healthy")
    return _run(registry, flowers, cache, factory), cache


def _run(registry, root, cache, factory):
    ctx = RunContext(
        model_cfg=registry.model("clip-tiny"),
        data_root=root,
        data_source="synthetic",
        model_factory=factory,
        trainer=TrainerOptions(accelerator="cpu", progress=False),
        num_workers=0,
        cache_dir=cache,
    )
    return linear_probe.run(registry.task("flowers102"), ctx)


def _leftovers(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()]


def _entry(cache: Path, out, split: str) -> Path:
    """The entry of `split`: the one file a healthy run wrote that holds that split's labels."""
    n = {"train": out.details["n_train"], "val": out.details["n_val"], "test": out.n_samples}[split]
    (path,) = [p for p in (cache / "features").rglob("*.pt") if len(FeatureCache(cache).load(p.stem).labels) == n]
    return path


def test_disk_full_mid_write_warns_once_names_the_entry_and_leaves_nothing(tmp_path, caplog):
    cache = FeatureCache(tmp_path)
    feats = SplitFeatures(torch.randn(2000, 64), torch.zeros(2000, dtype=torch.long))  # ~0.5 MB
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the kernel refuses bytes past 64 KiB
    try:
        with caplog.at_level(logging.WARNING, logger="mmbench"):
            first = cache.save("ab" * 32, feats, {})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    with caplog.at_level(logging.WARNING, logger="mmbench"):
        second = cache.save("cd" * 32, feats, {})  # room again, but this run has stopped writing
    assert first is None and second is None and _leftovers(tmp_path) == []  # no partial entry, no .tmp
    path = tmp_path / "features" / "ab" / f"{'ab' * 32}.pt"
    assert cache.error == f"{path}: File too large"
    assert [r.getMessage() for r in caplog.records] == [
        f"feature cache: cannot write {path}: File too large; going on without caching"
    ]


def test_a_cache_that_fills_up_does_not_stop_the_cli_run(registry, flowers, healthy, tmp_path):
    """`mmbench run` with every file capped at 24 KiB: the train features cannot be written, the result (smaller)
    can. Exit 0, one warning naming the entry and the reason, nothing left in the cache, the healthy run's numbers."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    limit = 24 * 1024
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from mmbench.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["run", "--model", "clip-tiny", "--task", "flowers102", "--data-root", str(flowers.parent)]
    args += ["--output", str(out), "--cache-dir", str(cache), "--no-progress", "--num-workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(Path(mmbench.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warned = [line for line in proc.stderr.splitlines() if "feature cache" in line]
    assert len(warned) == 1 and f"cannot write {cache}/features/" in warned[0] and "File too large" in warned[0]
    assert [p for p in _leftovers(cache) if p.suffix in (".pt", ".tmp")] == []
    res = json.loads(result_path(out, "clip-tiny", "flowers102").read_text())
    assert res["details"]["feature_cache"] == {"train": "unsaved", "val": "unsaved", "test": "unsaved"}
    assert res["details"]["feature_cache_error"].endswith(": File too large")
    assert res["metrics"] == healthy[0].metrics and res["details"]["sweep"] == healthy[0].details["sweep"]


def test_a_cache_folder_that_cannot_exist_does_not_stop_the_run(registry, flowers, factory, healthy, tmp_path, caplog):
    (tmp_path / "features").write_text("a file where the cache's folder should be")  # fails as any user, root too
    with caplog.at_level(logging.WARNING, logger="mmbench"):
        out = _run(registry, flowers, tmp_path, factory)
    assert out.metrics == healthy[0].metrics
    assert out.details["feature_cache"] == {"train": "unsaved", "val": "unsaved", "test": "unsaved"}
    warned = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert (
        len(warned) == 1
        and f"cannot write {tmp_path}/features/" in warned[0]
        and "features is a file, not a folder" in warned[0]
    )


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated", "malicious pickle"])
def test_a_damaged_entry_is_a_miss_and_is_rewritten(registry, flowers, factory, healthy, tmp_path, damage, caplog):
    cache = shutil.copytree(healthy[1], tmp_path / "cache")
    entry = _entry(cache, healthy[0], "val")
    good = FeatureCache(cache).load(entry.stem)
    marker = tmp_path / "the-pickle-ran"
    if damage == "flipped bytes":
        data = bytearray(entry.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
        entry.write_bytes(bytes(data))
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:200])
    else:
        entry.write_bytes(pickle.dumps(_Payload(marker), protocol=2))  # unpickling it would create `marker`
    with caplog.at_level(logging.WARNING, logger="mmbench"):
        out = _run(registry, flowers, cache, factory)
    assert not marker.exists()  # weights_only=True refused it
    assert out.metrics == healthy[0].metrics and out.details["sweep"] == healthy[0].details["sweep"]
    assert out.details["feature_cache"] == {"train": "hit", "val": "miss", "test": "hit"}
    assert any(str(entry) in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
    again = FeatureCache(cache).load(entry.stem)  # rewritten: valid, the same features
    assert torch.equal(again.features, good.features) and torch.equal(again.labels, good.labels)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))
