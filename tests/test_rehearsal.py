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
    rehearsal.write_data(["vqav2", "flickr30k", "snli_ve"], data, 4, rehearsal.registry())
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


def test_in_context_presets_build_without_weights(rehearsal):
    """The in-context presets build through their wrappers on the meta device (no weights allocated), and the IDEFICS
    one keeps idefics-9b's layout (its config.json): a gated cross-attention block exists at all (HF builds
    num_hidden_layers // cross_layer_interval of them and indexes block 0 at layer 0) at the published widths."""
    import torch

    from mmbench.models import build_model
    from mmbench.models.base import Capability

    reg = rehearsal.registry()
    for short in ("flamingo", "idefics"):
        with torch.device("meta"):
            model = build_model(reg.model(rehearsal.MODELS[short]))
        assert Capability.GENERATE in model.capabilities and next(model.parameters()).device.type == "meta"
    cfg = model.model.config
    vision, perceiver = cfg.vision_config, cfg.perceiver_config
    assert len(model.model.model.gated_cross_attn_layers) == cfg.num_hidden_layers // cfg.cross_layer_interval >= 1
    assert (cfg.cross_layer_interval, cfg.qk_layer_norms, cfg.use_resampler) == (4, True, True)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.max_position_embeddings) == (
        4096, 11008, 32, 2048)  # fmt: skip
    assert (vision.embed_dim, vision.num_hidden_layers, vision.num_attention_heads, vision.patch_size) == (
        1280,
        32,
        16,
        14,
    )
    assert vision.image_size == reg.model("idefics").preprocess.image_size == 224
    assert (perceiver.resampler_n_latents, perceiver.resampler_depth, perceiver.resampler_n_heads) == (64, 6, 16)


def test_shared_data_folder_is_written_once_at_the_largest_size(rehearsal, tmp_path):
    """vqav2 and vqav2_fewshot read the same folder: one copy, with enough training questions for the most shots."""
    reg = rehearsal.registry()
    rows = rehearsal.write_data(["vqav2", "vqav2_fewshot"], tmp_path / "data", {"vqav2": 3, "vqav2_fewshot": 7}, reg)
    assert [(r["task"], r["n"]) for r in rows] == [("vqav2,vqav2_fewshot", 7)]
    questions = json.loads((tmp_path / "data" / "vqav2" / "v2_OpenEnded_mscoco_train2014_questions.json").read_text())
    assert len(questions["questions"]) == 7


@pytest.mark.parametrize("preset", ["flamingo-tiny", "idefics-tiny"])
def test_prompt_length_is_the_models_own(rehearsal, preset):
    """The note's prompt length counts the tokens the model reads (IDEFICS: its translated prompt, with fake image
    tokens and BOS): the model's own context check names the same count."""
    import torch

    from mmbench.errors import ConfigError
    from mmbench.models import build_model

    model = build_model(rehearsal.registry().model(preset))
    prompt = "<image>Question:what is it? Short answer:a cube<|endofchunk|>\n<image>Question:and this? Short answer:"
    size = model.cfg.preprocess.image_size
    with pytest.raises(ConfigError, match=rf"prompt 0 is {rehearsal.prompt_tokens(model, prompt)} tokens"):
        model.generate([torch.zeros(2, 3, size, size)], [prompt], max_new_tokens=2048)


def test_in_context_rows_per_shot_count(rehearsal, tmp_path):
    """In-context tasks run once per shot count (rows named as their results), on real-shape data with enough
    training records for the most shots; a row counts queries x trials and notes the prompts' lengths."""
    import argparse

    reg, tasks = rehearsal.registry(), ["vqav2_fewshot", "hateful_memes_fewshot"]
    args = argparse.Namespace(n=2, limit=4, finetune_limit=3, incontext_limit=2, shots=[0, 3])
    sizes = rehearsal.data_sizes(reg, tasks, args)
    assert sizes == {"vqav2_fewshot": 3, "hateful_memes_fewshot": 3}  # 3 distinct demonstrations need 3 records
    rehearsal.write_data(tasks, tmp_path / "data", sizes, reg)
    groups = rehearsal.plan(reg, tasks, args)
    assert groups == [[2, tasks, ["task.incontext.shots=0"]], [2, tasks, ["task.incontext.shots=3"]]]
    groups[1][2].append("task.incontext.trials=2")
    spec = {
        "model": "idefics-tiny", "tasks": tasks, "groups": groups, "n": 2, "batch": 2, "steps": 1, "workers": 0,
        "accelerator": "cpu", "precision": None, "data_root": str(tmp_path / "data"),
        "output": str(tmp_path / "results"), "cache": str(tmp_path / "cache"), "rows": str(tmp_path / "rows.json"),
    }  # fmt: skip
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    assert rehearsal.worker(spec_path) == 0
    rows = {r["task"]: r for r in json.loads(Path(spec["rows"]).read_text())}
    assert sorted(rows) == sorted(f"{t}-{s}shot" for t in tasks for s in (0, 3))
    for t in tasks:
        zero, three = rows[f"{t}-0shot"], rows[f"{t}-3shot"]
        assert all(r["status"] == "ok" and r["data_rate"] > 0 and r["protocol"] == "incontext" for r in (zero, three))
        assert (zero["samples"], three["samples"]) == (2, 2 * 2)  # 2 queries, x 2 trials at 3 shots
        assert "2 random demonstrations/query (text only), 1 images/query" in zero["note"]
        assert "3 shots x 2 trial(s), 3 random demonstrations/query, 4 images/query, prompts " in three["note"]


def test_a_model_without_generate_gets_an_na_row_and_no_data_timing(rehearsal, tmp_path):
    reg = rehearsal.registry()
    rehearsal.write_data(["vqav2_fewshot"], tmp_path / "data", 2, reg)
    spec = {
        "model": "clip-tiny", "tasks": ["vqav2_fewshot"],
        "groups": [[2, ["vqav2_fewshot"], ["task.incontext.shots=1"]]],
        "n": 2, "batch": 2, "steps": 1, "workers": 0, "accelerator": "cpu", "precision": None,
        "data_root": str(tmp_path / "data"), "output": str(tmp_path / "results"), "cache": str(tmp_path / "cache"),
        "rows": str(tmp_path / "rows.json"),
    }  # fmt: skip
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    assert rehearsal.worker(spec_path) == 0
    (row,) = json.loads(Path(spec["rows"]).read_text())
    assert (row["task"], row["status"], row["data_rate"], row["samples"]) == ("vqav2_fewshot-1shot", "n/a", None, 0)
    assert row["note"] == "model 'clip-tiny' has no GENERATE capability, which in-context evaluation needs"
