"""`--logger csv|tensorboard|wandb`: fine-tuning's training loss, learning rate and validation metric reach the
logger, one run folder per (model, task, seed), read back and checked against the result's own record of the
validations and the recipe's schedule; a missing package or an unknown name is one line before any work."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch

from mmbench import evaluate
from mmbench.cli import main
from mmbench.errors import ConfigError
from mmbench.lit.finetune import WarmupDecay

# 6 updates on 48 samples, validated after 3 and 6 (Lightning then logs every 3 updates): a second per run.
SHORT = [
    "task.data.synthetic.finetune.max_steps=6",
    "task.data.synthetic.finetune.val_every_steps=3",
    "task.data.synthetic.finetune.warmup_steps=4",
]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rte(tmp_path: Path, logger: str, **kwargs):
    return evaluate(
        "clip-tiny",
        "rte",
        data="synthetic",
        limit=48,
        progress=False,
        num_workers=0,
        output=tmp_path / "out",
        cache_dir=kwargs.pop("cache_dir", None),
        overrides=SHORT,
        logger=logger,
        fresh=True,  # train (a finished run folder of the same recipe would only be evaluated, logging nothing)
        **kwargs,
    )


def _expected_lr(res, step: int) -> float:
    p = res.details["finetune"]
    return p["lr"] * WarmupDecay(p["warmup_steps"], p["max_steps"], p["schedule"])(step)


def test_csv_logger_records_loss_lr_and_validation(tmp_path):
    res = _rte(tmp_path, "csv")[0]
    folder = tmp_path / "out" / "logs" / "clip-tiny" / "rte" / "seed0" / "version_0"  # default: <output>/logs
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    val = [float(r["val_accuracy"]) for r in rows if r["val_accuracy"]]
    # every validation run, as the result records it (Lightning logs float32)
    assert val == pytest.approx([h["accuracy"] for h in res.details["val_history"]], rel=1e-6)
    losses = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert losses and all(math.isfinite(x) and x > 0 for x in losses)
    lrs = [(int(r["step"]), float(r["lr"])) for r in rows if r["lr"]]
    assert lrs and all(lr == pytest.approx(_expected_lr(res, step), rel=1e-6) for step, lr in lrs)
    hparams = (folder / "hparams.yaml").read_text()
    assert "task: rte" in hparams and f"config_hash: {res.config_hash}" in hparams


def test_tensorboard_logger_writes_events_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = _rte(tmp_path, "tensorboard", log_dir=tmp_path / "tb")[0]
    folder = tmp_path / "tb" / "clip-tiny" / "rte" / "seed0" / "version_0"
    assert list(folder.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folder))
    events.Reload()
    assert {"train_loss", "lr", "val_accuracy"} <= set(events.Tags()["scalars"])
    val = [e.value for e in events.Scalars("val_accuracy")]
    assert val == pytest.approx([h["accuracy"] for h in res.details["val_history"]], rel=1e-6)  # float32 there
    for e in events.Scalars("lr"):
        assert e.value == pytest.approx(_expected_lr(res, e.step), rel=1e-6)


def test_wandb_offline_makes_one_run_per_seed(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    res = _rte(tmp_path, "wandb", seeds=[0, 1], log_dir=tmp_path / "wb")[0]
    runs = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    # two seeds, two runs: the first seed's run was finished, not continued by the second
    assert len(runs) == 2 and all(list(r.glob("run-*.wandb")) for r in runs)
    assert len(res.seed_runs) == 2


def test_missing_package_and_unknown_logger_are_one_line(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match=r"--logger 'mlflow': expected one of csv, tensorboard, wandb"):
        _rte(tmp_path, "mlflow")
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: `import tensorboard` fails
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(
        ConfigError, match=r"--logger tensorboard needs the tensorboard package: pip install tensorboard"
    ):
        _rte(tmp_path, "tensorboard")
    monkeypatch.setitem(sys.modules, "wandb", None)
    argv = ["run", "--model", "clip-tiny", "--task", "rte", "--data", "synthetic", "--output", str(tmp_path / "o")]
    assert main([*argv, "--logger", "wandb"]) == 2
    err = capsys.readouterr().err.strip()
    need = "needs the wandb package: pip install wandb (or pip install 'mmbench[loggers]')"
    assert err == f"mmbench: error: --logger wandb {need}"
    assert not (tmp_path / "o").exists() and not (tmp_path / "out").exists()  # nothing ran
