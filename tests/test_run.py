"""End to end: `mmbench run` under a real Lightning Trainer writes results that a hand computation reproduces;
resume, redo, overrides, errors and multi-process evaluation."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from test_retrieval_metric import brute_force

from mmbench import evaluate
from mmbench.cli import main
from mmbench.data import open_reader, synthetic
from mmbench.models import build_model
from mmbench.results.store import read, result_path


@pytest.fixture(scope="module")
def flickr25(tmp_path_factory, registry):
    """25 images (odd, so two ranks get different counts) in the CLIP_benchmark layout."""
    return synthetic.write(registry.task("flickr30k"), tmp_path_factory.mktemp("d") / "flickr30k", n=25, seed=1)


def _run(*args: str) -> int:
    return main(["run", "--no-progress", "--num-workers", "0", *args])


def test_run_writes_a_complete_result_that_a_hand_computation_reproduces(registry, tmp_path, flickr25, capsys):
    rc = _run(
        "--model", "clip-tiny", "--task", "flickr30k", "--data-root", str(flickr25.parent), "--output", str(tmp_path)
    )
    assert rc == 0
    res = read(result_path(tmp_path, "clip-tiny", "flickr30k"))
    assert res.status == "ok" and res.domain == "multimodal" and res.n_samples == 25
    assert res.data_source == "synthetic", "a folder written by `data synth` is never labelled real"
    assert res.random_init and res.limit is None and res.config_hash.startswith("sha256:")
    assert set(res.metrics) == {"tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10"}
    assert res.scores == {k: pytest.approx(100 * res.metrics[k]) for k in ("tr_r1", "tr_r5", "ir_r1", "ir_r5")}
    prov = res.provenance
    for key in ("mmbench", "torch", "transformers", "lightning", "git_commit", "seed", "device", "wall_seconds"):
        assert key in prov
    assert prov["peak_rss_mb"] > 0
    assert res.details == {"n_images": 25, "n_texts": 125, "format": "wds_retrieval", "samples_per_rank": [25]}
    assert "clip-tiny  flickr30k" in capsys.readouterr().out  # the closing summary table

    # The same numbers computed by hand: no Lightning, no loader, full similarity matrix, brute-force ranks.
    model = build_model(registry.model("clip-tiny"))
    recs = list(open_reader(registry.task("flickr30k"), flickr25).samples("test"))
    tf = model.image_transform()
    with torch.no_grad():
        img = model.image_embeddings(torch.stack([tf(r["image"]) for r in recs]))
        txt = model.text_embeddings(**model.tokenize([c for r in recs for c in r["captions"]]))
    t2i = torch.arange(25).repeat_interleave(5)
    assert res.metrics == pytest.approx(brute_force(img, txt, t2i, [1, 5, 10]), abs=1e-9)


def test_resume_skips_redo_reruns_and_overrides_change_the_hash(tmp_path, flickr25, caplog):
    caplog.set_level(logging.INFO, logger="mmbench")
    args = [
        "--model",
        "flava-tiny",
        "--task",
        "flickr30k",
        "--data-root",
        str(flickr25.parent),
        "--output",
        str(tmp_path),
    ]
    assert _run(*args) == 0
    path = result_path(tmp_path, "flava-tiny", "flickr30k")
    first = read(path)
    stamp = path.stat().st_mtime_ns
    assert _run(*args) == 0
    assert path.stat().st_mtime_ns == stamp and "up to date" in caplog.text
    assert _run(*args, "--redo") == 0
    assert path.stat().st_mtime_ns != stamp and read(path).metrics == first.metrics
    assert (
        _run(
            *args,
            "--set",
            "task.retrieval.ks=[1,2]",
            "--set",
            "task.metrics=[tr_r1,tr_r2,ir_r1,ir_r2]",
            "--set",
            "task.scores=[tr_r1,ir_r1]",
        )
        == 0
    )
    changed = read(path)
    assert changed.config_hash != first.config_hash and set(changed.metrics) == {"tr_r1", "tr_r2", "ir_r1", "ir_r2"}
    assert changed.config["task"]["retrieval"]["ks"] == [1, 2]


def test_limit_and_api(tmp_path, flickr25):
    results = evaluate(
        "clip-tiny", "flickr30k", data_root=flickr25.parent, limit=7, output=tmp_path, progress=False, num_workers=0
    )
    assert [r.n_samples for r in results] == [7] and results[0].limit == 7
    assert not results[0].is_reference_grade


def test_synthetic_mode_generates_data_and_keeps_results_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _run("--model", "clip-tiny", "--task", "coco", "--data", "synthetic", "--limit", "20") == 0
    assert (tmp_path / "results" / "synthetic" / "runs" / "clip-tiny" / "coco.json").is_file()
    assert not (tmp_path / "results" / "runs").exists()


def test_missing_data_is_one_clear_message(tmp_path, capsys):
    rc = _run(
        "--model", "clip-tiny", "--task", "flickr30k", "--data-root", str(tmp_path / "none"), "--output", str(tmp_path)
    )
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err  # a data problem
    assert err.startswith("mmbench: error: task 'flickr30k': dataset not found at") and err.count("\n") == 1
    assert "nshards.txt" in err and "dataset_flickr30k.json" in err


def test_unknown_model_and_bad_override(capsys):
    assert _run("--model", "clip-tinny", "--task", "coco") == 2
    assert "unknown model 'clip-tinny'. Did you mean 'clip-tiny'" in capsys.readouterr().err
    assert _run("--model", "clip-tiny", "--task", "coco", "--set", "task.retrieval.chunk=3") == 2
    assert "key 'retrieval.chunk'" in capsys.readouterr().err


def test_a_failing_task_keeps_results_already_written(tmp_path, flickr25, capsys):
    import shutil

    import webdataset as wds

    shutil.copytree(flickr25, tmp_path / "data" / "coco")  # COCO is next; make its data corrupt
    (tmp_path / "data" / "flickr30k").symlink_to(flickr25)
    with wds.TarWriter(str(tmp_path / "data" / "coco" / "test" / "0.tar")) as sink:
        sink.write({"__key__": "s0000000", "webp": b"garbage", "txt": "a caption"})
    rc = _run(
        "--model",
        "clip-tiny",
        "--task",
        "flickr30k",
        "--task",
        "coco",
        "--data-root",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "out"),
    )
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err
    assert "coco/test/0.tar:s0000000.webp: cannot decode image" in err
    assert read(result_path(tmp_path / "out", "clip-tiny", "flickr30k")).status == "ok"
    assert not result_path(tmp_path / "out", "clip-tiny", "coco").exists()


@pytest.mark.multiprocess
def test_two_process_ddp_equals_single_process(tmp_path, flickr25):
    """2 CPU processes (gloo) on 25 samples in blocks of 4: rank 0 gets blocks 0,2,4,6 (13 samples), rank 1 gets
    blocks 1,3,5 (12); the gathered result is identical to one process's."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = [
        sys.executable,
        "-m",
        "mmbench",
        "run",
        "--model",
        "clip-tiny",
        "--task",
        "flickr30k",
        "--no-progress",
        "--data-root",
        str(flickr25.parent),
        "--num-workers",
        "0",
        "--accelerator",
        "cpu",
        "--batch-size",
        "4",
    ]
    for devices in ("1", "2"):
        proc = subprocess.run(
            [*base, "--devices", devices, "--output", str(tmp_path / devices)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    one = json.loads(result_path(tmp_path / "1", "clip-tiny", "flickr30k").read_text())
    two = json.loads(result_path(tmp_path / "2", "clip-tiny", "flickr30k").read_text())
    assert two["provenance"]["device"] == "cpu x2" and one["provenance"]["device"] == "cpu x1"
    assert two["metrics"] == one["metrics"] and two["n_samples"] == one["n_samples"] == 25
    assert two["config_hash"] == one["config_hash"]
    assert one["details"]["samples_per_rank"] == [25] and two["details"]["samples_per_rank"] == [13, 12]


def test_a_missing_capability_is_recorded_as_na_before_any_data_is_read(tmp_path):
    """flamingo-tiny has no contrastive space: retrieval is n/a with its reason, even where no dataset exists."""
    rc = _run(
        "--model",
        "flamingo-tiny",
        "--task",
        "flickr30k",
        "--data-root",
        str(tmp_path / "none"),
        "--output",
        str(tmp_path),
    )
    assert rc == 0
    res = read(result_path(tmp_path, "flamingo-tiny", "flickr30k"))
    assert res.status == "n/a" and res.scores == {} and "no CONTRASTIVE capability" in res.reason


def test_real_preset_without_data_or_network_names_what_is_missing(tmp_path, capsys):
    """The real `flava` preset, no dataset and HF_HUB_OFFLINE: first the data, then (given data) the checkpoint."""
    assert _run("--model", "flava", "--task", "flickr30k", "--data-root", str(tmp_path / "none")) == 3
    err = capsys.readouterr().err
    assert "dataset not found at" in err and f"{tmp_path}/none/flickr30k/test/nshards.txt" in err
    assert (
        _run(
            "--model", "flava", "--task", "flickr30k", "--data", "synthetic", "--limit", "5", "--output", str(tmp_path)
        )
        == 4  # a checkpoint problem
    )
    err = capsys.readouterr().err
    assert "'facebook/flava-full' is not in the local Hugging Face cache" in err and "Traceback" not in err
    assert not result_path(tmp_path, "flava", "flickr30k").exists()


def test_list_and_data_synth_commands(tmp_path, capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "flava-tiny" in out and "facebook/flava-full" in out and "[random weights]" in out
    assert main(["list", "groups"]) == 0 and "retrieval" in capsys.readouterr().out
    assert (
        main(["data", "synth", "--task", "coco", "--out", str(tmp_path / "c"), "--n", "5", "--format", "karpathy"]) == 0
    )
    assert json.loads((tmp_path / "c" / "SYNTHETIC.json").read_text())["format"] == "karpathy"
    assert main(["data", "synth", "--task", "coco", "--out", str(tmp_path / "d"), "--format", "parquet"]) == 2
