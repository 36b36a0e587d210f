"""One task on 2 nodes x 1 process, simulated on localhost: two `torchrun --nnodes 2` agents (gloo), sharing one
cache and results folder as nodes share a filesystem. Lightning detects torchrun (TorchElasticEnvironment); the
results equal one process's exactly, and only global rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmbench.api import evaluate
from mmbench.results.store import result_path

STEPS = ["task.data.synthetic.finetune.max_steps=20", "task.data.synthetic.finetune.val_every_steps=10"]
TASKS = ("sst2", "cifar10")  # fine-tuned, and the linear probe (feature extraction + cache)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.multiprocess
def test_two_nodes_equal_one_process(tmp_path):
    # Micro-batches of 16 either way: 1 process accumulates 2 of them per update of 32, 2 nodes take one each.
    common = dict(data="synthetic", limit=64, batch_size=16, accelerator="cpu", progress=False, num_workers=0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = evaluate(
            "flava-tiny", TASKS, **common, overrides=STEPS, output=tmp_path / "o1", cache_dir=tmp_path / "c1"
        )
    finally:
        torch.set_num_threads(before)

    port = free_port()
    run = ["-m", "mmbench", "run", "--model", "flava-tiny", *(a for t in TASKS for a in ("--task", t))]
    run += ["--data", "synthetic", "--limit", "64", "--batch-size", "16", "--accelerator", "cpu", "--no-progress"]
    run += ["--num-workers", "0", *(a for s in STEPS for a in ("--set", s)), "--num-nodes", "2", "--devices", "1"]
    run += ["--output", str(tmp_path / "o2"), "--cache-dir", str(tmp_path / "c2")]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
            + ["--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port), *run],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outs):
        assert node.returncode == 0, err[-3000:]
    assert "flava-tiny  sst2" in outs[0][0] and "sst2" not in outs[1][0]  # the summary: global rank 0's alone

    for one in ref:
        path = result_path(tmp_path / "o2", "flava-tiny", one.task)
        two = json.loads(path.read_text())
        assert two["metrics"] == one.metrics and two["scores"] == one.scores, one.task
        assert two["n_samples"] == one.n_samples == 64 and two["config_hash"] == one.config_hash
        assert two["provenance"]["device"] == "cpu x1, 2 nodes" and one.provenance["device"] == "cpu x1"
    sst2 = json.loads(result_path(tmp_path / "o2", "flava-tiny", "sst2").read_text())
    assert sst2["details"]["samples_per_rank"] == {"validation": [32, 32]}  # blocks of 16: 0, 2 | 1, 3
    assert sst2["details"]["batch"] == {"effective": 32, "device": 16, "devices": 2, "accumulate": 1}
    assert sst2["details"]["val_history"] == next(r for r in ref if r.task == "sst2").details["val_history"]
    probe = json.loads(result_path(tmp_path / "o2", "flava-tiny", "cifar10").read_text())
    assert probe["details"]["feature_cache"] == {"train": "miss", "test": "miss"}  # extracted across the 2 nodes

    # Only rank 0 wrote: one result per task, nothing half-written beside them; the shared synthetic data were
    # installed once per task (a second writer keeps the first one's folder), no temporary left behind.
    assert sorted(p.name for p in (tmp_path / "o2" / "runs" / "flava-tiny").iterdir()) == ["cifar10.json", "sst2.json"]
    for task in TASKS:
        assert len(list((tmp_path / "c2" / "synthetic" / task).iterdir())) == 1
    assert len(list((tmp_path / "c2" / "features").rglob("*.pt"))) == 2
    assert not [p for p in Path(tmp_path / "c2").rglob("*") if ".tmp" in p.name]
