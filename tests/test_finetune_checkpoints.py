"""Fine-tuning run folders under faults: a checkpoint write that fails (a file-size limit standing in for a full
disk), corrupt checkpoints, `--redo` and `--fresh`, and a kill between `last.ckpt` and `state.json`. Each starts
from a copy of one finished run folder and checks the outcome against that run's result."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmbench import evaluate
from mmbench.cli import main
from mmbench.lit.run_folder import BEST, LAST, STATE
from mmbench.results.store import read, result_path

SRC = str(Path(__file__).resolve().parents[1] / "src")
SHORT = [
    "task.data.synthetic.finetune.max_steps=60",
    "task.data.synthetic.finetune.val_every_steps=20",
    "task.data.synthetic.finetune.warmup_steps=6",
]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished STS-B run: its result, and its cache (synthetic data + run folder) to copy."""
    base = tmp_path_factory.mktemp("finished")
    res = evaluate(
        "flava-tiny",
        "stsb",
        data="synthetic",
        output=base / "out",
        cache_dir=base / "cache",
        overrides=SHORT,
        progress=False,
        num_workers=0,
    )[0]
    return res, base / "cache"


def _copy(finished, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished run's cache; returns (cache, run folder)."""
    res, cache = finished
    shutil.copytree(cache, tmp_path / "cache")
    folder = tmp_path / "cache" / Path(res.details["run_folder"]).relative_to(cache)
    return tmp_path / "cache", folder


def _args(cache: Path, out: Path, *extra: str) -> list[str]:
    sets = [a for s in SHORT for a in ("--set", s)]
    return ["run", "--model", "flava-tiny", "--task", "stsb", "--data", "synthetic", "--no-progress", "--num-workers",
            "0", "--cache-dir", str(cache), "--output", str(out), *sets, *extra]  # fmt: skip


def _unfinished(folder: Path) -> None:
    """state.json as a kill would leave it at step 40 of 60: the next run resumes from last.ckpt."""
    state = json.loads((folder / STATE).read_text())
    state.update(step=40, done=False, history=state["history"][:2])
    (folder / STATE).write_text(json.dumps(state))


def test_a_failed_checkpoint_write_names_the_file_and_leaves_no_temporary(finished, tmp_path):
    """A file-size limit between the sizes of best.pt and last.ckpt: the first last.ckpt cannot be written."""
    cache, folder = _copy(finished, tmp_path)
    best, last = (folder / BEST).stat().st_size, (folder / LAST).stat().st_size
    shutil.rmtree(folder)  # train from scratch; the data are in the cache already
    limit = (best + last) // 2
    assert best < limit < last

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes fail with EFBIG

    cmd = [sys.executable, "-m", "mmbench", *_args(cache, tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limited)
    assert done.returncode == 5, done.stderr[-3000:]  # output that cannot be written
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"mmbench: error: {folder / LAST}: cannot write") and "Traceback" not in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == [BEST]  # no temporary left, nothing half-written
    assert not result_path(tmp_path / "out", "flava-tiny", "stsb").exists()


@pytest.mark.parametrize("broken", [LAST, BEST])
def test_a_corrupt_checkpoint_names_the_file_and_fresh_trains_again(finished, tmp_path, capsys, broken):
    ref, _ = finished
    cache, folder = _copy(finished, tmp_path)
    _unfinished(folder)
    data = (folder / broken).read_bytes()
    (folder / broken).write_bytes(data[: len(data) // 2])  # a write cut short
    out = tmp_path / "out"
    for extra in ([], ["--redo"]):
        assert main(_args(cache, out, *extra)) == 4  # a checkpoint that cannot be loaded
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"mmbench: error: {folder / broken}: unreadable fine-tuning checkpoint (") and (
            err.endswith("; run the same command with --fresh to discard this run folder and train from the start")
        ), err
        assert "\n" not in err
    assert not result_path(out, "flava-tiny", "stsb").exists()

    assert main(_args(cache, out, "--fresh")) == 0
    again = read(result_path(out, "flava-tiny", "stsb"))
    assert again.details["resumed_from_step"] == 0 and again.metrics == ref.metrics
    assert again.details["val_history"] == ref.details["val_history"]
    assert json.loads((folder / STATE).read_text())["done"]


@pytest.mark.parametrize("state", ["stale", "missing"])
def test_a_kill_between_last_ckpt_and_state_json_resumes_to_the_same_result(finished, tmp_path, state):
    """last.ckpt holds the last step (60) but state.json still says 40, or was never written; a leftover temporary
    of a write in progress is cleared. The next run restores everything from last.ckpt, trains nothing, and
    gives the finished run's result."""
    ref, _ = finished
    cache, folder = _copy(finished, tmp_path)
    if state == "stale":
        _unfinished(folder)
    else:
        (folder / STATE).unlink()
    (folder / f".{LAST}.tmp").write_bytes(b"half a checkpoint")
    res = evaluate(
        "flava-tiny",
        "stsb",
        data="synthetic",
        output=tmp_path / "out",
        cache_dir=cache,
        overrides=SHORT,
        progress=False,
        num_workers=0,
    )[0]
    assert res.details["resumed_from_step"] == 60 and res.metrics == ref.metrics
    assert res.details["val_history"] == ref.details["val_history"]
    assert res.details["selection"] == ref.details["selection"]
    saved = json.loads((folder / STATE).read_text())
    assert saved["done"] and saved["step"] == 60 and saved["history"] == ref.details["val_history"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([BEST, LAST, STATE])
