"""`lit.predict`'s ragged all-gather in a real 2-process gloo run: ranks with different counts, a rank with no
samples at all (a split smaller than one block), and a split with none, each give exactly the 1-process outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmbench

# Run as a script: Lightning's DDP launcher starts rank 1 by re-running the script that rank 0 runs.
SCRIPT = '''
import sys
import torch
from torch import nn
from mmbench.data import IndexedStream, Reader
from mmbench.lit.predict import IndexedPredictor, StreamDataModule, predict
from mmbench.lit.trainer import TrainerOptions, make_trainer


class Numbers(Reader):
    """n records, record i carrying the vector (i, i^2, -i): no files, nothing else to go wrong."""

    format = "numbers"

    def __init__(self, n):
        self.n = n

    def samples(self, split, limit=None, keep=None):
        for i in range(self.n if limit is None else min(limit, self.n)):
            if keep is None or keep(i):
                yield {"index": i, "x": torch.tensor([i, i * i, -i], dtype=torch.float32)}


def identity(rec):
    return rec


def collate(items):
    return {"index": torch.tensor([r["index"] for r in items]), "x": torch.stack([r["x"] for r in items])}


def outputs(model, batch):
    return {"y": model(batch["x"]), "x": batch["x"]}  # (B, 2), (B, 3)


devices, out = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
model = nn.Linear(3, 2)
results = {}
for n in (3, 9, 0):  # blocks of 4 -> rank 0 holds [0-3] and [8], rank 1 [4-7]; with 3 samples rank 1 holds none
    trainer = make_trainer(TrainerOptions(accelerator="cpu", devices=devices, progress=False))
    predictor = IndexedPredictor(model, outputs)
    got = predict(trainer, predictor, StreamDataModule(IndexedStream(Numbers(n), "test", identity, 4), 0, collate))
    results[n] = {"outputs": got, "per_rank": list(predictor.samples_per_rank), "world": trainer.world_size}
    if trainer.world_size > 1:  # every rank holds the gathered result, not only rank 0
        objs = [None] * trainer.world_size
        torch.distributed.all_gather_object(objs, {k: v.tolist() for k, v in got.items()})
        results[n]["same_on_every_rank"] = all(o == objs[0] for o in objs)
if trainer.is_global_zero:
    torch.save(results, out)
'''


def _run(tmp_path: Path, devices: int) -> dict:
    script, out = tmp_path / "gather.py", tmp_path / f"out{devices}.pt"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(mmbench.__file__).parents[1])}  # this checkout's mmbench
    proc = subprocess.run(
        [sys.executable, str(script), str(devices), str(out)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.multiprocess
def test_ragged_all_gather_with_an_empty_rank_equals_one_process(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert [two[n]["per_rank"] for n in (3, 9, 0)] == [[3, 0], [5, 4], [0, 0]]  # the cases the test is about
    assert [one[n]["per_rank"] for n in (3, 9, 0)] == [[3], [9], [0]]
    assert all(two[n]["world"] == 2 and two[n]["same_on_every_rank"] for n in (3, 9, 0))
    for n in (3, 9):
        a, b = one[n]["outputs"], two[n]["outputs"]
        assert a["index"].tolist() == list(range(n)) and set(a) == set(b) == {"index", "x", "y"}
        for key in a:  # identical batches on any rank layout: bitwise the single-process numbers
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (n, key)
        assert torch.equal(a["x"][:, 0], torch.arange(n, dtype=torch.float32))  # row i is sample i
    assert one[0]["outputs"] == {} and two[0]["outputs"] == {}
