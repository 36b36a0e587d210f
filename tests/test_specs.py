"""Model specs beside presets (models/specs.py, models/hf_spec.py): `hf:` checkpoints by id or folder, preset YAMLs
outside the registry, plug-ins through the `mmbench.models` entry point group, and what results record of them."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from mmbench import api, cli
from mmbench.config import Registry, config_hash, resolved_model_dict
from mmbench.errors import ConfigError
from mmbench.models.fingerprint import content_digest, weights_fingerprint
from mmbench.models.preprocess import NESTED_PROCESSOR_FILE, PROCESSOR_FILE, resolve_preprocess
from mmbench.paths import model_folder, spec_name
from mmbench.results import store

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = Path(__file__).resolve().parent / "plugin_pkg"
TEXT_POSITIONS = 40  # not CLIP's 77: the spec must take the text length from the checkpoint's config


def save_tiny_clip(folder: Path, seed: int) -> Path:
    """A random CLIP at 32 px saved as a user would: model, tokenizer and processor (`CLIPProcessor`, which
    transformers 5 writes as a nested processor_config.json) with save_pretrained. Resize 36, crop 32: not the
    config's 32/32, so the test sees whose preprocessing was used."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from mmbench.models.tokenizers import tiny_bpe

    tok = tiny_bpe(TEXT_POSITIONS)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text.update(max_position_embeddings=TEXT_POSITIONS, vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    text.update(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config={**vision, "image_size": 32}, projection_dim=16))
    model.save_pretrained(folder)
    image = CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("ckpt") / "tiny-clip", seed=0)


def _run(*argv: str) -> int:
    return cli.main(["run", *argv, "--data", "synthetic", "--no-progress", "--num-workers", "0"])


def test_hf_spec_of_a_saved_clip_runs_retrieval_and_records_what_ran(tiny_clip, tmp_path):
    spec = f"hf:{tiny_clip}/"  # a trailing slash names the same model
    (res,) = api.evaluate(spec, "flickr30k", data="synthetic", limit=8, output=tmp_path, progress=False, num_workers=0)
    assert res.status == "ok" and res.model == f"hf:{tiny_clip}" and res.n_samples == 8
    model = res.config["model"]
    assert model["wrapper"] == "mmbench.models.clip:ClipWrapper" and model["checkpoint"] == str(tiny_clip)
    assert model["source_id"] == content_digest(tiny_clip) and model["max_text_length"] == TEXT_POSITIONS
    assert res.provenance["model_library"]["name"] == "transformers"
    path = store.result_path(tmp_path, res.model, "flickr30k")
    assert path.parent.name == model_folder(res.model) and spec_name(path.parent.name) == res.model
    assert store.read(path).config_hash == res.config_hash and store.read_all(tmp_path)[0].model == res.model


def test_a_resaved_folder_is_another_model_for_results_and_feature_caches(tmp_path, registry):
    task, run = registry.task("cifar10"), {"seed": 0, "limit": 8}
    folder = save_tiny_clip(tmp_path / "ckpt", seed=0)
    before = registry.model(f"hf:{folder}")
    key_before = weights_fingerprint(before)  # what feature caches are keyed by, read from the disk now
    save_tiny_clip(folder, seed=1)  # same shapes and file names, other weights
    after = Registry().model(f"hf:{folder}")
    assert before.name == after.name and before.source_id != after.source_id
    assert config_hash(before, task, run) != config_hash(after, task, run)
    assert key_before != weights_fingerprint(after)


def test_processor_config_json_written_by_a_processor_preprocesses_like_preprocessor_config_json(tiny_clip, tmp_path):
    """transformers 5 saves a processor's image settings nested in processor_config.json; a folder holding only
    that must preprocess as one holding the image processor's own preprocessor_config.json."""
    from transformers import CLIPImageProcessor

    assert (tiny_clip / NESTED_PROCESSOR_FILE).is_file() and not (tiny_clip / PROCESSOR_FILE).exists()
    flat = tmp_path / "flat"
    shutil.copytree(tiny_clip, flat)
    (flat / NESTED_PROCESSOR_FILE).unlink()
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(flat)
    nested, legacy = (resolve_preprocess(Registry().model(f"hf:{d}")) for d in (tiny_clip, flat))
    assert nested.source == str(tiny_clip / NESTED_PROCESSOR_FILE) and legacy.source == str(flat / PROCESSOR_FILE)
    assert nested.config == legacy.config and (nested.config.resize, nested.config.image_size) == (36, 32)


def test_set_overrides_apply_on_top_of_a_spec(tiny_clip, registry):
    ov = {"max_text_length": 16, "preprocess": {"image_size": 24}, "random_init": True}
    cfg = registry.model(f"hf:{tiny_clip}", ov)
    assert (cfg.max_text_length, cfg.preprocess.image_size, cfg.random_init) == (16, 24, True)
    with pytest.raises(ConfigError, match="local path"):
        registry.model(f"hf:{tiny_clip}", {"revision": "v2"})


def _fake_snapshot(cache: Path, repo: str, commit: str, config: dict) -> None:
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "config.json").write_text(json.dumps(config))
    (folder / "refs").mkdir(exist_ok=True)


def test_hub_specs_pin_the_cached_commit_of_their_revision(tmp_path, monkeypatch, registry):
    """Offline, from the local cache only: the default branch and an explicit revision (in the spec or by
    --set) resolve to their commits, which the config (and so its hash) records."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    config = {"model_type": "bert", "max_position_embeddings": 514}
    main, old = "a" * 40, "b" * 40
    _fake_snapshot(tmp_path / "hub", "org/enc", main, config)
    _fake_snapshot(tmp_path / "hub", "org/enc", old, config)
    refs = tmp_path / "hub" / "models--org--enc" / "refs"
    (refs / "main").write_text(main)
    (refs / "v1").write_text(old)
    at_main, at_v1, by_set = (
        registry.model(s, ov, check=False)
        for s, ov in (("hf:org/enc", {}), ("hf:org/enc@v1", {}), ("hf:org/enc@main", {"revision": "v1"}))
    )
    assert (at_main.revision, at_main.source_id) == (main, f"hf:org/enc@{main}")
    assert at_v1.revision == by_set.revision == old and at_v1.source_id == f"hf:org/enc@{old}"
    assert at_v1.name == by_set.name == "hf:org/enc@v1"  # so their results are not main's
    assert at_main.wrapper == "mmbench.models.hf_encoders:HfTextEncoderWrapper"
    assert (at_main.max_text_length, at_main.text_only_max_length) == (512, 512)  # RoBERTa-style 514 positions
    task = registry.task("sst2")
    assert config_hash(at_main, task, {}) != config_hash(at_v1, task, {})


def test_bad_specs_are_one_line(tmp_path, capsys):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cases = {
        f"hf:{tmp_path / 'llama'}": [
            "LlamaConfig",
            "'llama'",
            "supported model types: albert, bert, camembert",
            "clip",
        ],
        "hff:org/model": ["unknown spec family 'hff:'", "did you mean 'hf:'"],
        f"hf:{tmp_path / 'none'}": ["does not exist"],
        "hf:org/not-cached": ["not in the local Hugging Face cache", "HF_HUB_OFFLINE"],
        str(tmp_path / "missing.yaml"): ["no such file"],
    }
    for spec, words in cases.items():
        assert _run("--model", spec, "--task", "cifar10", "--output", str(tmp_path / "out")) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(w in err for w in words), (spec, err)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> str:
    """The example plug-in, importable and registered without installing it: its package folder and a generated
    .dist-info (entry points from its pyproject.toml) on sys.path, where importlib.metadata looks."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    info = tmp_path / "site" / "mmbench_example_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "top_level.txt").write_text("mmbench_example_plugin\n")
    groups = project["entry-points"]
    lines = [f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for g, eps in groups.items()]
    (info / "entry_points.txt").write_text("\n".join(lines))
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield "example-randproj"
    for name in [m for m in sys.modules if m.startswith("mmbench_example_plugin")]:
        del sys.modules[name]


def test_a_plugin_entry_point_and_a_plugin_yaml_run_a_linear_probe(plugin, tmp_path, capsys):
    out = tmp_path / "out"
    small = ["--set", "model.preprocess.image_size=32", "--set", "model.preprocess.resize=32"]  # --set applies too
    for model, extra in ((plugin, small), (str(PLUGIN / "plugin.yaml"), [])):
        argv = ["--model", model, "--task", "cifar10", "--limit", "24", "--output", str(out), *extra]
        assert _run(*argv) == 0, model
    results = {r.model: r for r in store.read_all(out)}
    assert set(results) == {"example-randproj", "plugin"}
    assert all(r.status == "ok" and r.n_samples > 0 for r in results.values())
    dims = {m: r.config["model"]["arch"].get("dim") for m, r in results.items()}
    assert dims == {"example-randproj": None, "plugin": 24}
    assert results["example-randproj"].config["model"]["preprocess"]["image_size"] == 32
    small = Registry().model("example-randproj-small")  # an entry point that is a function returning a preset
    assert (small.arch, small.preprocess.image_size, small.random_init) == ({"dim": 16}, 32, True)
    assert results["plugin"].config["model"]["wrapper"] == "mmbench_example_plugin.wrapper:RandomProjectionWrapper"
    lib = results["example-randproj"].provenance["model_library"]
    assert lib == {"name": "mmbench-example-plugin", "version": "0.1.0"}
    capsys.readouterr()
    assert cli.main(["list", "models"]) == 0
    listed = capsys.readouterr().out
    examples = ("hf:openai/clip-vit-base-patch16", "timm:vit_base_patch16_224.augreg_in21k", "open_clip:ViT-B-32/")
    assert all(e in listed for e in examples) and "entry point group mmbench.models" in listed
    assert "example-randproj (mmbench_example_plugin.wrapper:RandomProjectionWrapper)" in listed


def test_a_broken_plugin_is_one_line_naming_it(plugin, tmp_path, capsys):
    info = next((tmp_path / "site").glob("*.dist-info"))
    with open(info / "entry_points.txt", "a") as f:
        f.write("\n[mmbench.models]\nbroken = mmbench_example_plugin.missing:Wrapper\n")
    assert _run("--model", "broken", "--task", "cifar10") != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plug-in 'broken'" in err and "ModuleNotFoundError" in err


def test_a_yaml_named_like_a_preset_is_refused(tmp_path, registry):
    (tmp_path / "clip-tiny.yaml").write_text((PLUGIN / "plugin.yaml").read_text())
    with pytest.raises(ConfigError, match="also the preset"):
        registry.model(str(tmp_path / "clip-tiny.yaml"))


def test_model_folders_keep_preset_names_and_never_share(registry):
    assert all(model_folder(name) == name for name in registry.model_files)
    names = [
        "hf:org/model",
        "hf:/tmp/a/b",
        "hf:org/model@v1.0",
        "timm:vit_base_patch16_224.augreg_in21k",
        "open_clip:ViT-B-32/laion2b_s34b_b79k",
        "hf:~/x",
        "hf:a-/b",
        "hf:a--b",
        "hf--a--b",
        "a b",
        "x" * 300,
    ]
    folders = [model_folder(n) for n in names]
    assert len(set(folders)) == len(names) and all("/" not in f and ":" not in f and len(f) < 200 for f in folders)
    assert folders[0] == "hf--org--model" and [spec_name(f) for f in folders[:5]] == names[:5]


def test_committed_results_keep_their_config_hash(registry):
    """Specs add `source_id` to ModelConfig; presets leave it None, which is neither recorded nor hashed. One
    committed result per (tiny preset, protocol), on a few tasks (loading a task costs a fraction of a second)."""
    picked: dict[tuple[str, str], Path] = {}
    for path in sorted((ROOT / "results" / "synthetic" / "runs").glob("*-tiny/*.json")):
        res = store.read(path)
        if res.protocol != "incontext" and res.task in ("cifar10", "flickr30k", "sst2"):
            picked.setdefault((res.model, res.protocol), path)  # in-context shots are task overrides: left out
    tasks = {}
    for path in picked.values():
        res = store.read(path)
        model = registry.model(res.model, check=False)
        task = tasks.setdefault(res.task, registry.task(res.task))
        assert "source_id" not in res.config["model"] and "source_id" not in resolved_model_dict(model)
        assert config_hash(model, task, res.config["run"]) == res.config_hash, path
    assert len(picked) >= 6 and len({m for m, _ in picked}) >= 3
