"""`--log-samples`: per-sample predictions beside the results, for fine-tuning (GLUE classification and STS-B
regression), the linear probe and retrieval. Each file is checked against its result by re-computing the result's
metrics from the rows alone (which proves both that the rows are the predictions the metrics saw and that the
rows are complete), and its ids against the dataset's own; off by default; atomic; the config hash does not move."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmbench import evaluate
from mmbench.cli import main
from mmbench.config import Registry
from mmbench.data import open_reader, synthetic
from mmbench.metrics import classification
from mmbench.metrics.accuracy import mean_per_class, top1
from mmbench.results import samples
from mmbench.results.store import read, result_path

SRC = str(Path(__file__).resolve().parents[1] / "src")
COMMON = ["--data", "synthetic", "--no-progress", "--num-workers", "0", "--accelerator", "cpu"]
# A fine-tuning schedule of a few updates: the log is about what the evaluation predicted, not about learning.
FEW_STEPS = [f"task.data.synthetic.finetune.{k}" for k in ("max_steps=4", "val_every_steps=4", "warmup_steps=1")]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(tmp_path: Path, model: str, task: str, *args: str) -> int:
    out, cache = tmp_path / "out", tmp_path / "cache"
    return main(
        ["run", "--model", model, "--task", task, "--output", str(out), "--cache-dir", str(cache), *COMMON, *args]
    )


def _rows(tmp_path: Path, model: str, name: str) -> list[dict]:
    return samples.read(samples.samples_path(tmp_path / "out", model, name))


def _ids(task: str, cache: Path, split: str, n: int) -> list:
    """The dataset's own ids of the first n records, as its reader gives them with the records themselves."""
    tcfg = Registry().task(task)
    reader = open_reader(tcfg, synthetic.ensure(tcfg, cache))
    return [rec["key"] for rec in reader.samples(split, limit=n)]


def test_glue_classification_rows_recompute_accuracy_and_hash_is_unchanged(tmp_path, caplog):
    """RTE: one row per evaluated sample; accuracy = mean(correct); the ids are the GLUE idx column."""
    set_ = [a for o in FEW_STEPS for a in ("--set", o)]
    assert _run(tmp_path, "flava-tiny", "rte", "--limit", "24", *set_) == 0
    assert not (tmp_path / "out" / "samples").exists()  # off by default
    plain = read(result_path(tmp_path / "out", "flava-tiny", "rte"))

    # up to date, but without samples: run again (the run folder is only re-evaluated) and log them
    caplog.set_level("INFO", logger="mmbench")
    assert _run(tmp_path, "flava-tiny", "rte", "--limit", "24", *set_, "--log-samples") == 0
    assert "up to date, but no" in caplog.text
    res = read(result_path(tmp_path / "out", "flava-tiny", "rte"))
    assert res.config_hash == plain.config_hash and res.metrics == plain.metrics  # the flag moves nothing
    rows = _rows(tmp_path, "flava-tiny", "rte")
    assert len(rows) == res.n_samples == 24
    keys = {"index", "id", "text", "text_pair", "split", "prediction", "target", "score", "correct", "prob_1"}
    assert all(set(r) == keys for r in rows)
    assert [r["index"] for r in rows] == list(range(24)) and {r["split"] for r in rows} == {"validation"}
    assert [r["id"] for r in rows] == _ids("rte", tmp_path / "cache", "validation", 24)
    assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(res.metrics["accuracy"], abs=1e-12)
    assert all(r["correct"] == (r["prediction"] == r["target"]) and 0.5 <= r["score"] <= 1 for r in rows)
    assert all(r["prob_1"] == pytest.approx(r["score"] if r["prediction"] == 1 else 1 - r["score"]) for r in rows)

    # a later run that does not log samples leaves no file that describes another run than the result's
    assert _run(tmp_path, "flava-tiny", "rte", "--limit", "24", *set_, "--redo") == 0
    assert not samples.samples_path(tmp_path / "out", "flava-tiny", "rte").exists()


def test_stsb_regression_rows_recompute_pearson(tmp_path):
    """Regression: the predicted value is `prediction` and `score`; Pearson and Spearman re-computed from them."""
    res = evaluate(
        "flava-tiny", "stsb", data="synthetic", limit=24, output=tmp_path / "out", cache_dir=tmp_path / "cache",
        overrides=FEW_STEPS, progress=False, num_workers=0, accelerator="cpu", log_samples=True,
    )[0]  # fmt: skip
    rows = _rows(tmp_path, "flava-tiny", "stsb")
    assert len(rows) == res.n_samples == 24 and all("correct" not in r for r in rows)
    assert all(r["prediction"] == r["score"] and isinstance(r["target"], float) for r in rows)
    pred, target = torch.tensor([r["prediction"] for r in rows]), torch.tensor([r["target"] for r in rows])
    again = classification.compute(["pearson", "spearman"], pred, target, regression=True)
    assert again == pytest.approx({k: res.metrics[k] for k in again}, abs=1e-6)


def test_linear_probe_rows_recompute_top1_and_mean_per_class(tmp_path):
    assert _run(tmp_path, "clip-tiny", "cifar10", "--limit", "40", "--log-samples") == 0
    res = read(result_path(tmp_path / "out", "clip-tiny", "cifar10"))
    rows = _rows(tmp_path, "clip-tiny", "cifar10")
    assert len(rows) == res.n_samples == res.details["n_test"]
    assert all(set(r) == {"index", "id", "image", "prediction", "target", "score", "correct"} for r in rows)
    assert [r["id"] for r in rows] == _ids("cifar10", tmp_path / "cache", "test", len(rows))
    pred, target = torch.tensor([r["prediction"] for r in rows]), torch.tensor([r["target"] for r in rows])
    assert top1(pred, target) == res.metrics["top1"] == sum(r["correct"] for r in rows) / len(rows)
    assert mean_per_class(pred, target) == res.metrics["mean_per_class"]
    k = res.details["num_classes"]
    assert all(1 / k <= r["score"] <= 1 for r in rows)  # the probability of the argmax class
    # only the final file: no temporary left beside it
    assert os.listdir(tmp_path / "out" / "samples" / "clip-tiny") == ["cifar10.jsonl"]


def _recall_from_rows(rows: list[dict], ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    out = {}
    for kind, prefix in (("image", "tr"), ("text", "ir")):
        ranks = [r["rank"] for r in rows if r["query"] == kind]
        out.update({f"{prefix}_r{k}": sum(rank < k for rank in ranks) / len(ranks) for k in ks})
    return out


def test_retrieval_rows_hold_every_query_and_recompute_recall(tmp_path):
    assert _run(tmp_path, "clip-tiny", "flickr30k", "--limit", "12", "--log-samples") == 0
    res = read(result_path(tmp_path / "out", "clip-tiny", "flickr30k"))
    rows = _rows(tmp_path, "clip-tiny", "flickr30k")
    images, texts = [r for r in rows if r["query"] == "image"], [r for r in rows if r["query"] == "text"]
    assert len(images) == res.details["n_images"] == 12 and len(texts) == res.details["n_texts"]
    assert [r["id"] for r in images] == _ids("flickr30k", tmp_path / "cache", "test", 12)
    assert _recall_from_rows(rows) == pytest.approx({k: res.metrics[k] for k in ("tr_r1", "tr_r5", "ir_r1", "ir_r5")})
    ids = {r["id"] for r in images}
    for r in texts:  # each caption names its image; each image lists its captions
        assert r["target"] in ids and r["id"] in images[r["index"]]["target"] and r["prediction"] in ids
        assert r["correct"] == (r["rank"] == 0) and r["text"]
    assert all(r["correct"] == (r["rank"] == 0) and r["prediction"].split("#")[0] in ids for r in images)


def test_interrupted_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = samples.samples_path(tmp_path, "m", "t")
    assert samples.write(path, [{"index": 0, "correct": True}]) == 1

    def rows():
        yield {"index": 0, "correct": False}
        raise KeyboardInterrupt  # killed halfway through the file

    with pytest.raises(KeyboardInterrupt):
        samples.write(path, rows())
    assert samples.read(path) == [{"index": 0, "correct": True}]
    assert os.listdir(path.parent) == ["t.jsonl"]


@pytest.mark.multiprocess
def test_two_process_retrieval_log_equals_one_process(tmp_path):
    """9 images in blocks of 2 over 2 ranks: the rows are gathered and de-duplicated as the metrics are."""
    args = ["--limit", "9", "--batch-size", "2", "--log-samples"]
    assert _run(tmp_path, "clip-tiny", "flickr30k", *args) == 0  # one process, in this one
    cmd = [sys.executable, "-m", "mmbench", "run", "--model", "clip-tiny", "--task", "flickr30k", *COMMON, *args]
    cmd += ["--devices", "2", "--output", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = samples.samples_path(tmp_path / "out", "clip-tiny", "flickr30k").read_text()
    two = samples.samples_path(tmp_path / "two", "clip-tiny", "flickr30k").read_text()
    assert read(result_path(tmp_path / "two", "clip-tiny", "flickr30k")).details["samples_per_rank"] == [5, 4]
    assert two == one and len(one.splitlines()) > 9


def test_zeroshot_rows_recompute_top1(tmp_path):
    assert _run(tmp_path, "clip-tiny", "cifar10_zeroshot", "--limit", "30", "--log-samples") == 0
    res = read(result_path(tmp_path / "out", "clip-tiny", "cifar10_zeroshot"))
    rows = _rows(tmp_path, "clip-tiny", "cifar10_zeroshot")
    assert len(rows) == res.n_samples == 30 and [r["index"] for r in rows] == list(range(30))
    pred, target = torch.tensor([r["prediction"] for r in rows]), torch.tensor([r["target"] for r in rows])
    assert top1(pred, target) == res.metrics["top1"] and mean_per_class(pred, target) == res.metrics["mean_per_class"]


def test_several_seeds_log_one_samples_file_per_seed(tmp_path):
    """--seeds with --log-samples: each seed's predictions in `<name>.seed<N>.jsonl`; the result's mean accuracy
    is the mean of the accuracies recomputed from each seed's rows; the model folder of a spec is file-system safe."""
    set_ = [a for o in FEW_STEPS for a in ("--set", o)]
    assert _run(tmp_path, "clip-tiny", "rte", "--limit", "16", *set_, "--seeds", "0,1", "--log-samples") == 0
    res = read(result_path(tmp_path / "out", "clip-tiny", "rte"))
    plain = samples.samples_path(tmp_path / "out", "clip-tiny", "rte")
    assert not plain.exists() and [r["seed"] for r in res.seed_runs] == [0, 1]
    accuracies = []
    for seed in (0, 1):
        rows = samples.read(samples.per_seed(plain, seed))
        assert len(rows) == 16
        accuracies.append(sum(r["correct"] for r in rows) / len(rows))
    assert [r["metrics"]["accuracy"] for r in res.seed_runs] == pytest.approx(accuracies, abs=1e-12)
    assert res.metrics["accuracy"] == pytest.approx(sum(accuracies) / 2, abs=1e-12)
