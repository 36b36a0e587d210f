"""benchmarks/rehearsal.py's harness, on a tiny preset: a failing (model, task) becomes a FAIL row with its one-line
error and the model's other tasks still run; rows count what the model processed and time the data path."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rehearsal():
    spec = importlib.util.spec_from_file_location("rehearsal", ROOT / "benchmarks" / "rehearsal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_presets_follow_the_real_presets(rehearsal):
    """Random weights, and what the real presets fix besides weights (preprocessing, text lengths, BEiT-3's arch)
    comes from them by `include`, so the rehearsal cannot drift from what a real run uses."""
    reg = rehearsal.registry()
    for short, preset in rehearsal.MODELS.items():
        cfg, real = reg.model(preset), reg.model("beit3-base" if short == "beit3-base" else short)
        assert cfg.random_init and cfg.checkpoint is None and not real.random_init
        assert cfg.preprocess == real.preprocess
        assert (cfg.max_text_length, cfg.text_only_max_length) == (real.max_text_length, real.text_only_max_length)
    assert reg.model(rehearsal.MODELS["beit3-base"]).arch == reg.model("beit3-base").arch
    assert reg.model("clip").name == "clip" and not reg.model("clip").random_init  # real presets not shadowed


def test_a_failure_is_a_row_and_the_rest_still_runs(rehearsal, tmp_path):
    data = tmp_path / "data"
    rehearsal.write_data(["vqav2", "flickr30k", "snli_ve"], data, n=4)
    missing = sorted((data / "vqav2" / "val2014").iterdir())[0]
    missing.unlink()  # a real run would stop on this before any step: so must the row
    tasks = ["vqav2", "flickr30k", "snli_ve"]
    spec = {
        "model": "clip-tiny", "tasks": tasks, "groups": [[4, tasks, []]],
        "n": 4, "batch": 2, "steps": 1, "workers": 0, "accelerator": "cpu", "precision": None,
        "data_root": str(data), "output": str(tmp_path / "results"), "cache": str(tmp_path / "cache"),
        "rows": str(tmp_path / "rows.json"),
    }  # fmt: skip
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    assert rehearsal.worker(spec_path) == 0
    rows = {r["task"]: r for r in json.loads(Path(spec["rows"]).read_text())}
    assert rows["vqav2"]["status"] == "FAIL" and rows["vqav2"]["error"].startswith("DataError: ")
    assert missing.name in rows["vqav2"]["error"] and "\n" not in rows["vqav2"]["error"]
    assert rows["flickr30k"]["status"] == "ok" and rows["flickr30k"]["samples"] == 4
    # snli_ve: 1 update of 2, the dev split (4) at the end for selection, the test split (4) scored.
    assert rows["snli_ve"]["status"] == "ok" and rows["snli_ve"]["samples"] == 2 + 4 + 4
    assert all(rows[t]["data_rate"] > 0 and rows[t]["peak_mb"] > 0 for t in ("flickr30k", "snli_ve"))
    assert not (tmp_path / "cache" / "finetune" / "clip-tiny" / "snli_ve").exists()  # GBs at full size
    text = rehearsal.table(list(rows.values()))
    assert "FAIL" in text and missing.name in text and text.count("\n") == 4
