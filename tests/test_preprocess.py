"""Where a wrapper's preprocessing comes from, how image-size overrides compose with it, and why the feature cache
cannot serve features made with other preprocessing. Parity with the reference transforms:
tests/test_preprocess_parity.py."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mmbench.config import parse_overrides
from mmbench.errors import ConfigError
from mmbench.models import build_model
from mmbench.models.fingerprint import weights_fingerprint
from mmbench.models.preprocess import PROCESSOR_FILE, ImageTransform, resolve_preprocess
from mmbench.schema import PreprocessConfig

CLIP_FILE = {"size": 224, "crop_size": 224, "resample": 3, "image_processor_type": "CLIPImageProcessor"}
FLAVA_FILE = {"size": 224, "crop_size": 224, "resample": 3, "image_processor_type": "FlavaImageProcessor"}


def photo(width: int = 640, height: int = 480) -> Image.Image:
    rng = np.random.default_rng(width + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---- the transform ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["shortest_edge", "square"])
def test_an_image_size_override_scales_the_resize_with_the_crop(mode):
    """A preset that resizes to 256 and crops 224 resizes to 549 and crops 480 when a task asks for 480 (the ratio
    kept, as timm's crop_pct), in either mode; equal to torchvision's transforms doing the same."""
    p = PreprocessConfig(image_size=224, resize=256, resize_mode=mode, crop_rounding="round")
    ours = ImageTransform(p, image_size=480)
    assert (ours.resize, ours.size) == (549, 480)
    resize = 549 if mode == "shortest_edge" else (549, 549)
    reference = T.Compose([T.Resize(resize, T.InterpolationMode.BICUBIC), T.CenterCrop(480), T.ToTensor()])
    expected = T.Normalize(p.mean, p.std)(reference(photo()))
    torch.testing.assert_close(ours(photo()), expected, rtol=0, atol=1e-6)


def test_crop_rounding_picks_the_pixel_an_odd_margin_starts_at():
    """640x427 -> 335x224: a margin of 111. HF processors start at 55 (floor), torchvision's CenterCrop at 56."""
    image = photo(640, 427)
    resized = T.ToTensor()(image.resize((335, 224), Image.Resampling.BICUBIC))
    for rounding, left in [("floor", 55), ("round", 56)]:
        p = PreprocessConfig(mean=[0.0] * 3, std=[1.0] * 3, crop_rounding=rounding)
        torch.testing.assert_close(ImageTransform(p)(image), resized[:, :, left : left + 224], rtol=0, atol=0)


def test_transform_pickles_for_loader_workers_and_converts_to_rgb():
    transform = ImageTransform(PreprocessConfig(image_size=32, resize=32, resize_mode="square"))
    again = pickle.loads(pickle.dumps(transform))
    grey = photo(64, 48).convert("L")
    assert torch.equal(again(grey), transform(grey.convert("RGB"))) and again(grey).shape == (3, 32, 32)


# ---- where it comes from ---------------------------------------------------------------------------------------
def saved_clip(registry, root: Path, processor: dict | None) -> Path:
    model = build_model(registry.model("clip-tiny"))
    model.model.save_pretrained(root)
    model.tokenizer.save_pretrained(root)
    if processor is not None:
        (root / PROCESSOR_FILE).write_text(json.dumps(processor))
    return root


def local(registry, root: Path, preset: str = "clip-tiny"):
    items = [f"model.checkpoint={root}", "model.random_init=false", "model.tokenizer=null"]
    return registry.model(preset, parse_overrides(items)["model"])


def test_a_checkpoint_without_a_processor_config_uses_the_preset(registry, tmp_path):
    cfg = local(registry, saved_clip(registry, tmp_path / "ckpt", None))
    model = build_model(cfg)
    assert model.preprocess_source == "preset" and model.preprocess == cfg.preprocess


def test_unsupported_processor_settings_are_one_line_errors_naming_the_file(registry, tmp_path):
    bad = {**CLIP_FILE, "do_center_crop": False}  # short side 224, long side anything: not a square input
    root = saved_clip(registry, tmp_path / "ckpt", bad)
    with pytest.raises(ConfigError) as err:
        build_model(local(registry, root))
    msg = str(err.value)
    assert str(root / PROCESSOR_FILE) in msg and "do_center_crop" in msg and "\n" not in msg


def fake_hub_snapshot(cache: Path, repo: str, files: dict[str, str], absent: tuple[str, ...] = ()) -> str:
    """A Hugging Face cache entry as `hf download` leaves it: refs/main -> commit, snapshots/<commit>/<files>, and
    `.no_exist/<commit>/<file>` for files the hub said the repo lacks."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name, text in files.items():
        (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / commit / name).write_text(text)
    for name in absent:
        (folder / ".no_exist" / commit).mkdir(parents=True, exist_ok=True)
        (folder / ".no_exist" / commit / name).touch()
    return commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_checkpoints_use_their_cached_processor_config_and_the_key_knows(registry, hub_cache):
    """Cached file: used, named by commit. Known absent: the preset. Unknown (neither cached nor known absent,
    offline): the build falls back to the preset and says so, and the weights fingerprint -- and with it every
    feature cache key -- is None, so no cache entry is read or written under a guess."""
    config = json.dumps({"model_type": "flava"})
    commit = fake_hub_snapshot(hub_cache, "org/with", {"config.json": config, PROCESSOR_FILE: json.dumps(FLAVA_FILE)})
    fake_hub_snapshot(hub_cache, "org/without", {"config.json": config}, absent=(PROCESSOR_FILE,))
    fake_hub_snapshot(hub_cache, "org/unknown", {"config.json": config})
    cfg = {r: registry.model("flava", parse_overrides([f"model.checkpoint=org/{r}"])["model"]) for r in
           ("with", "without", "unknown")}  # fmt: skip

    used = resolve_preprocess(cfg["with"])
    assert used.source == f"hf:org/with@{commit}/{PROCESSOR_FILE}" and used.config.resize_mode == "square"
    assert resolve_preprocess(cfg["without"]).source == "preset"
    assert resolve_preprocess(cfg["unknown"], fetch=False) is None
    fallback = resolve_preprocess(cfg["unknown"])  # offline: cannot fetch
    assert fallback.config == cfg["unknown"].preprocess and "could not be fetched" in fallback.source

    prints = {r: weights_fingerprint(c) for r, c in cfg.items()}
    assert prints["unknown"] is None
    assert None not in (prints["with"], prints["without"]) and prints["with"] != prints["without"]


def test_the_weights_fingerprint_follows_the_processor_config_of_a_local_checkpoint(registry, tmp_path):
    """The feature cache key holds the preset's `preprocess` and this fingerprint; the effective preprocessing can
    change only with a file in the checkpoint, and every such change moves the fingerprint."""
    root = saved_clip(registry, tmp_path / "ckpt", None)
    cfg = local(registry, root)
    before = weights_fingerprint(cfg, memo_dir=tmp_path)
    assert build_model(cfg).preprocess_source == "preset"
    (root / PROCESSOR_FILE).write_text(json.dumps(CLIP_FILE))
    with_file = weights_fingerprint(cfg, memo_dir=tmp_path)
    model = build_model(cfg)
    assert model.preprocess_source == str(root / PROCESSOR_FILE) and model.preprocess != cfg.preprocess
    (root / PROCESSOR_FILE).write_text(json.dumps({**CLIP_FILE, "crop_size": 196}))
    changed = weights_fingerprint(cfg, memo_dir=tmp_path)
    assert build_model(cfg).preprocess.image_size == 196
    assert len({before, with_file, changed}) == 3


def test_random_init_presets_use_their_preset(registry):
    model = build_model(registry.model("flava-tiny"))
    assert model.preprocess_source == "preset"
    assert model.preprocess == registry.model("flava-tiny").preprocess
