"""The fault catalogue, recoveries (exit 0): a damaged result, cache entry or run folder, replaced data, a cache
that cannot be written, a kill between two writes, a split the data lack. The command finishes with the numbers of
the undamaged world, rewrites only what it must, and says so in the log. How entries are made and checked:
`test_faults.py`; a real kill -9 then resume is in `test_faults_processes.py`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_faults import (
    FLICKR,
    FLOWERS,
    RTE,
    WORLD,
    Evil,
    Fault,
    KnownDefect,
    build_world,
    check_fault,
    cmd,
    edit_result,
    params,
    run,
    world_result,
    write,
)
from test_faults_data import cut_checkpoint, run_folder

from mmbench.lit.run_folder import BEST, LAST, STATE, open_checkpoint
from mmbench.protocols.features import FeatureCache
from mmbench.results.store import read

FLICKR_RESULT, FLOWERS_RESULT, RTE_RESULT = (f"out/runs/clip-tiny/{t}.json" for t in ("flickr30k", "flowers102", "rte"))
RUN_FOLDERS = "cache/finetune/clip-tiny/rte/"
FEATURES = "cache/features/"


# --- making faults ---------------------------------------------------------------------------------------------------


def _replace_data(w: Path) -> None:
    """The dataset repaired or replaced under the same path: other images, same layout and size."""
    from mmbench.config import Registry
    from mmbench.data import synthetic

    synthetic.write(Registry().task("flickr30k"), w / "data" / "flickr30k", n=12, seed=7)


def _stale_run_folder(w: Path) -> None:
    """A fine-tuning run folder whose data fingerprint no longer matches (made from other data)."""
    state = run_folder(w) / STATE
    state.write_text(json.dumps({**json.loads(state.read_text()), "fingerprint": "from other data"}))
    (state.parent / "left-over.txt").write_text("must go")


def _killed_after_last_ckpt(state: str) -> Callable[[Path], None]:
    """What a kill between writing `last.ckpt` (step 2 of 2) and `state.json` leaves: a state.json of step 1 or none
    at all, a temporary of the write in progress, and no result."""

    def make(w: Path) -> None:
        folder = run_folder(w)
        if state == "stale":
            saved = json.loads((folder / STATE).read_text())
            saved.update(step=1, done=False, history=saved["history"][:1])
            (folder / STATE).write_text(json.dumps(saved))
        else:
            (folder / STATE).unlink()
        (folder / f".{LAST}.tmp").write_bytes(b"half a checkpoint")
        (w / RTE_RESULT).unlink()

    return make


def _smallest_entry(w: Path) -> Path:
    """The validation split's feature-cache entry (60 samples; train and test have 100)."""
    return min((w / FEATURES).rglob("*.pt"), key=lambda p: p.stat().st_size)


def _damage_entry(how: str) -> Callable[[Path], None]:
    def make(w: Path) -> None:
        entry = _smallest_entry(w)
        if how == "flipped bytes":
            data = bytearray(entry.read_bytes())
            data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # in the tensor data: it still loads
            entry.write_bytes(bytes(data))
        else:
            torch.save(Evil(w / "pwned"), entry)

    return make


def _no_features(w: Path) -> None:
    shutil.rmtree(w / FEATURES)


def _features_folder_is_a_file(w: Path) -> None:
    shutil.rmtree(w / FEATURES)
    (w / "cache" / "features").write_text("a file where the cache's folder should be")


def _flowers_without_val(w: Path) -> None:
    """The world's Flowers102 copied as a dataset of its own, with only train and test (as most wds_* sets)."""
    (generated,) = (w / "cache" / "synthetic" / "flowers102").glob("*")
    root = shutil.copytree(generated, w / "nv" / "flowers102")
    shutil.rmtree(root / "val")


# --- what must hold afterwards ---------------------------------------------------------------------------------------


def _same_as_world(rel: str) -> Callable[[Path, str], object]:
    """The result was evaluated again and has the world's numbers; returns it."""

    def check(w: Path, log: str = ""):
        res = read(w / rel)
        before = world_result(res.model, res.task)
        assert res.status == "ok" and res.provenance["finished_at"] != before.provenance["finished_at"]
        assert res.metrics == before.metrics and res.n_samples == before.n_samples
        return res

    return check


def _recomputed_on_new_data(w: Path, log: str) -> None:
    res = read(w / FLICKR_RESULT)
    assert res.data_fingerprint != world_result("clip-tiny", "flickr30k").data_fingerprint
    assert res.data_fingerprint.startswith("sha256:") and res.status == "ok" and res.n_samples == 12


def _run_folder_cleared(w: Path, log: str) -> None:
    folder = run_folder(w)
    assert not (folder / "left-over.txt").exists()
    assert json.loads((folder / STATE).read_text())["fingerprint"] != "from other data"
    assert read(w / RTE_RESULT).details["resumed_from_step"] == 0


def _trained_afresh(w: Path, log: str) -> None:
    res = _same_as_world(RTE_RESULT)(w)
    assert res.details["resumed_from_step"] == 0
    assert res.details["val_history"] == world_result("clip-tiny", "rte").details["val_history"]
    folder = run_folder(w)
    for name in (LAST, BEST):
        open_checkpoint(folder / name)  # whole again: raises CheckpointError otherwise
    assert json.loads((folder / STATE).read_text())["done"]


def _resumed_at_the_end(w: Path, log: str) -> None:
    """Restored from last.ckpt: nothing trained again, the world's history, selection and numbers."""
    res, before = _same_as_world(RTE_RESULT)(w), world_result("clip-tiny", "rte")
    assert res.details["resumed_from_step"] == 2
    assert res.details["val_history"] == before.details["val_history"]
    assert res.details["selection"] == before.details["selection"]
    folder = run_folder(w)
    saved = json.loads((folder / STATE).read_text())
    assert saved["done"] and saved["step"] == 2 and saved["history"] == before.details["val_history"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([BEST, LAST, STATE])  # the temporary is gone


def _entry_rewritten(w: Path, log: str) -> None:
    """One miss, rewritten with the undamaged entry's features; the others hit; the world's numbers."""
    res = _same_as_world(FLOWERS_RESULT)(w)
    assert sorted(res.details["feature_cache"].values()) == ["hit", "hit", "miss"]
    entry = _smallest_entry(w)
    again = FeatureCache(w / "cache").load(entry.stem)
    good = FeatureCache(WORLD[0] / "cache").load(entry.stem)
    assert torch.equal(again.features, good.features) and torch.equal(again.labels, good.labels)
    assert not (w / "pwned").exists()  # the pickle never ran


def _warned_once_and_cached_nothing(reason: str) -> Callable[[Path, str], None]:
    def check(w: Path, log: str) -> None:
        res = _same_as_world(FLOWERS_RESULT)(w)
        assert "unsaved" in res.details["feature_cache"].values() and "hit" not in res.details["feature_cache"].values()
        assert res.details["feature_cache_error"].endswith(reason.format(w=w))
        warned = [line for line in log.splitlines() if "feature cache: cannot write" in line]
        assert len(warned) == 1, warned
        assert not [p for p in w.rglob("*") if p.name.endswith(".tmp")]
        if warned[0].count("cannot write") != 1:
            raise KnownDefect(f"the warning says 'cannot write' twice: {warned[0]}")

    return check


def _held_out(w: Path, log: str) -> None:
    d = read(w / FLOWERS_RESULT).details
    assert d["validation"] == {"source": "holdout", "of": "train", "fraction": 0.1, "seed": 0, "requested": "val"}
    assert (d["n_train"], d["n_val"]) == (90, 10) and set(d["feature_cache"]) == {"train", "test"}


def _replaced_synthetic(w: Path, log: str) -> None:
    assert json.loads((w / "data" / "flickr30k" / "SYNTHETIC.json").read_text())["n"] == 3


CATALOGUE = [
    Fault("same data: up to date", run(*FLICKR), 0, ("flickr30k: up to date",)),
    # -- results: a damaged one is evaluated again, and so is one made on other data --------------------------------
    Fault(
        "corrupt result file is re-run",
        run(*FLICKR),
        0,
        ("{w}/out/runs/clip-tiny/flickr30k.json: not valid JSON", "running the task again"),
        make=write(FLICKR_RESULT, "{"),
        check=_same_as_world(FLICKR_RESULT),
        rewrites=(FLICKR_RESULT,),
    ),
    Fault(
        "wrong-typed result is re-run",
        run(*FLOWERS),
        0,
        ("flowers102.json: key 'scores.mean_per_class': '87.5' is not a finite number", "running the task again"),
        make=edit_result("clip-tiny/flowers102.json", **{"scores.mean_per_class": "87.5"}),
        check=_same_as_world(FLOWERS_RESULT),
        rewrites=(FLOWERS_RESULT,),
    ),
    Fault(
        "replaced data is re-run",
        run(*FLICKR),
        0,
        ("computed on other data",),
        make=_replace_data,
        check=_recomputed_on_new_data,
        rewrites=(FLICKR_RESULT,),
    ),
    # -- fine-tuning run folders ---------------------------------------------------------------------------------
    Fault(
        "run folder from other data is cleared",
        run(*RTE, "--redo"),
        0,
        (),
        make=_stale_run_folder,
        check=_run_folder_cleared,
        rewrites=(RUN_FOLDERS, RTE_RESULT),
    ),
    *(
        Fault(
            f"corrupt {name}: --fresh trains again",
            run(*RTE, "--fresh"),
            0,
            (),
            make=cut_checkpoint(name),
            check=_trained_afresh,
            rewrites=(RUN_FOLDERS, RTE_RESULT),
        )
        for name in (LAST, BEST)
    ),
    Fault(
        "kill between last.ckpt and a stale state.json",
        run(*RTE),
        0,
        (),
        make=_killed_after_last_ckpt("stale"),
        check=_resumed_at_the_end,
        rewrites=(RUN_FOLDERS, RTE_RESULT),
    ),
    Fault(
        "kill between last.ckpt and the first state.json",
        run(*RTE),
        0,
        (),
        make=_killed_after_last_ckpt("missing"),
        check=_resumed_at_the_end,
        rewrites=(RUN_FOLDERS, RTE_RESULT),
    ),
    # -- the feature cache only saves time: never a stop, never a wrong number -------------------------------------
    Fault(
        "damaged feature-cache entry is a miss",
        run(*FLOWERS, "--redo"),
        0,
        ("feature cache entry {w}/cache/features/", "is unreadable", "extracting again"),
        make=_damage_entry("flipped bytes"),
        check=_entry_rewritten,
        rewrites=(FEATURES, FLOWERS_RESULT),
    ),
    Fault(
        "malicious pickle as a feature-cache entry",
        run(*FLOWERS, "--redo"),
        0,
        ("feature cache entry {w}/cache/features/", "is unreadable", "Weights only load failed"),
        make=_damage_entry("malicious pickle"),
        check=_entry_rewritten,
        rewrites=(FEATURES, FLOWERS_RESULT),
    ),
    Fault(
        "disk full when writing the feature cache",
        run(*FLOWERS, "--redo"),
        0,
        ("feature cache: cannot write {w}/cache/features/", "File too large; going on without caching"),
        make=_no_features,
        file_size_limit=12_000,  # the entries are 10-16 KB, the result 8 KB
        check=_warned_once_and_cached_nothing("File too large"),
        rewrites=(FLOWERS_RESULT,),
    ),
    Fault(
        "feature-cache folder is a file",
        run(*FLOWERS, "--redo"),
        0,
        ("feature cache: cannot write {w}/cache/features/", "{w}/cache/features is a file, not a folder; going on"),
        make=_features_folder_is_a_file,
        check=_warned_once_and_cached_nothing("{w}/cache/features is a file, not a folder"),
        rewrites=(FLOWERS_RESULT,),
    ),
    # -- data without a split the task names ------------------------------------------------------------------------
    Fault(
        "linear probe on data without the validation split",
        run("--model", "clip-tiny", "--task", "flowers102", "--data-root", "{w}/nv", "--limit", "100"),
        0,
        ("hold-out", "no 'val', 'valid', 'validation' split"),
        make=_flowers_without_val,
        check=_held_out,
        rewrites=(FLOWERS_RESULT,),
    ),
    Fault(
        "synth over its own dataset",
        cmd("data", "synth", "--task", "flickr30k", "--out", "{w}/data/flickr30k", "--n", "3"),
        0,
        (),
        check=_replaced_synthetic,
        rewrites=("data/flickr30k/",),
    ),
]


@pytest.mark.parametrize("fault", params(CATALOGUE))
def test_fault(fault: Fault, world: Path, tmp_path: Path, monkeypatch, capsys, caplog):
    check_fault(fault, world, tmp_path, monkeypatch, capsys, caplog)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory)
