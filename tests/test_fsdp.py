"""`--strategy fsdp` on CPU (gloo): 2 processes train a tiny model sharded (FSDP FULL_SHARD, the wrapper's
transformer blocks as units), are killed after their first checkpoint, and 1 process resumes that FULL checkpoint
under FSDP: the weights and scores equal an unsharded, uninterrupted single-process run within float tolerance
(FSDP reduces gradients in its own order; measured on this CPU: identical, max |dw| = 0)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmbench.api import evaluate
from mmbench.data.base import part_blocks
from mmbench.errors import CheckpointError

# No dropout: the masks are drawn per micro-batch, and the micro-batches differ between the runs below.
STEPS = [
    "task.data.synthetic.finetune.max_steps=20",
    "task.data.synthetic.finetune.val_every_steps=10",
    "task.finetune.model_dropout=0.0",
    "task.finetune.head_dropout=0.0",
]
COMMON = dict(data="synthetic", limit=64, accelerator="cpu", progress=False, num_workers=0)
ATOL = 1e-5  # weights; scores are compared to 1e-6 (accuracy on 64 samples moves in steps of 1/64)


def _run(tmp_path: Path, cache: str, **kwargs):
    # batch 32 on 1 process: one micro-batch per update, as each of the 2 FSDP processes' 16 (no accumulation)
    kwargs = {**COMMON, "batch_size": 32, **kwargs}
    return evaluate("flava-tiny", "sst2", overrides=STEPS, cache_dir=tmp_path / cache, **kwargs)[0]


def _wait_for(folder: Path, pattern: str, proc: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    raise AssertionError(f"no {folder}/{pattern} after {timeout}s")


@pytest.mark.multiprocess
def test_fsdp_two_processes_resumed_on_one_equal_the_unsharded_run(tmp_path):
    saved_env, threads = dict(os.environ), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = _run(tmp_path, "c1", output=tmp_path / "o1")  # 1 process, no FSDP

        cmd = [sys.executable, "-m", "mmbench", "run", "--model", "flava-tiny", "--task", "sst2", "--data"]
        cmd += ["synthetic", "--limit", "64", "--batch-size", "16", "--accelerator", "cpu", "--no-progress"]
        cmd += ["--num-workers", "0", *(a for s in STEPS for a in ("--set", s)), "--devices", "2"]
        cmd += ["--strategy", "fsdp", "--cache-dir", str(tmp_path / "c2"), "--output", str(tmp_path / "o2")]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        # A session of its own, so that the kill takes Lightning's second process with it.
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
        last = _wait_for(tmp_path / "c2" / "finetune" / "flava-tiny" / "sst2", "*/last.ckpt", proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        saved = torch.load(last, weights_only=True)
        assert saved["global_step"] == 10  # a FULL checkpoint: one file, the model by name
        assert saved["state_dict"].keys() == torch.load(Path(ref.details["run_folder"]) / "best.pt").keys()

        # Its optimizer state is keyed the FSDP way: resuming it without FSDP is refused in one line.
        with pytest.raises(CheckpointError, match=r"last\.ckpt: written under --strategy fsdp; resume it the same"):
            _run(tmp_path, "c2", output=tmp_path / "o3")

        # 16 per process and update: 1 process would accumulate 2, which Lightning's restored loop cannot take.
        with pytest.raises(CheckpointError, match=r"trained with 1 micro-batch\(es\) per update and process, this"):
            _run(tmp_path, "c2", output=tmp_path / "o3", strategy="fsdp", batch_size=16)

        resumed = _run(tmp_path, "c2", output=tmp_path / "o2", strategy="fsdp")  # 1 process now, still FSDP
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)

    assert resumed.details["resumed_from_step"] == 10 and resumed.provenance["strategy"] == "fsdp"
    assert resumed.details["selection"]["chosen_step"] == ref.details["selection"]["chosen_step"]
    for name, value in ref.metrics.items():
        assert abs(resumed.metrics[name] - value) <= 1e-6, name
    for a, b in zip(resumed.details["val_history"], ref.details["val_history"], strict=True):
        assert a["step"] == b["step"] and abs(a["accuracy"] - b["accuracy"]) <= 1e-6
    w_ref = torch.load(Path(ref.details["run_folder"]) / "best.pt", weights_only=True)
    w_fsdp = torch.load(Path(resumed.details["run_folder"]) / "best.pt", weights_only=True)
    assert w_ref.keys() == w_fsdp.keys()
    worst = max((w_ref[k].float() - w_fsdp[k].float()).abs().max().item() for k in w_ref)
    print(f"FSDP 2 processes + 1 resumed vs unsharded: max |dw| = {worst:.3g}")
    assert worst <= ATOL, worst
    trained = [k for k in w_ref if "text_model.encoder.layer" in k]
    assert trained and any(not torch.equal(w_ref[k], saved["state_dict"][k]) for k in trained)  # steps 10-20 moved


@pytest.mark.parametrize("n_blocks,n_parts,skip", [(5, 2, set()), (1, 2, set()), (7, 3, {0, 4}), (0, 2, set())])
def test_fsdp_parts_run_as_many_blocks_and_cover_each_once(n_blocks, n_parts, skip):
    """Under FSDP every rank forwards as many batches as the others (each forward all-gathers parameters); the
    repeats are of the part's own blocks, so the gather's de-duplication by index leaves each block once."""
    plain = [part_blocks(n_blocks, n_parts, p, frozenset(skip)) for p in range(n_parts)]
    even = [part_blocks(n_blocks, n_parts, p, frozenset(skip), even=True) for p in range(n_parts)]
    live = [b for b in range(n_blocks) if b not in skip]
    assert sorted(b for part in plain for b in part) == live  # a partition
    assert {b for part in even for b in part} == set(live)
    assert len({len(part) for part in even}) == 1 and len(even[0]) == max(len(part) for part in plain)
