"""Each wrapper's own image transform against its checkpoint's reference preprocessing, on non-square textured
images in both orientations (noise over gradients: a one-pixel shift or another filter shows at once).

- CLIP, FLAVA: tiny models saved with `save_pretrained` beside the real checkpoints' `preprocessor_config.json`
  (openai/clip-vit-base-patch16, facebook/flava-full), loaded through the preset as any local checkpoint is; the
  references are the HF image processors built from the same file: the PIL backend (`*ImageProcessorPil`, the
  processors' original implementation) and transformers 5's default torchvision backend.
- BEiT-3: unilm `beit3/datasets.py` `build_transform(is_train=False)`: Resize((S, S), bicubic), ToTensor,
  Normalize(0.5, 0.5).
- OpenFlamingo: open_clip's eval `image_transform` (open_clip_torch from requirements/parity.txt, its
  `transform.py` loaded without the package `__init__`, which needs ftfy for its tokenizer).
Also at 480 px (VQAv2's fine-tuning size), where each reference is asked for 480. Each check prints its max
|difference| (`pytest -rP`).
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmbench.config import parse_overrides, to_dict
from mmbench.models import build_model
from mmbench.models.preprocess import PROCESSOR_FILE, from_processor_config

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# The files as the hub repos hold them (legacy feature-extractor spellings: `size: 224` means the shortest edge
# for CLIP and a 224x224 square for FLAVA, by each class's `default_to_square`).
CLIP_PROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "resample": 3,
    "size": 224,
}
FLAVA_PROCESSOR = {
    "codebook_crop_size": 112,
    "codebook_do_center_crop": True,
    "codebook_do_map_pixels": True,
    "codebook_do_normalize": True,
    "codebook_do_resize": True,
    "codebook_image_mean": [0.0, 0.0, 0.0],
    "codebook_image_std": [1.0, 1.0, 1.0],
    "codebook_resample": 1,
    "codebook_size": 112,
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "FlavaFeatureExtractor",
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "input_size_patches": 14,
    "mask_group_max_aspect_ratio": None,
    "mask_group_max_patches": None,
    "mask_group_min_aspect_ratio": 0.3,
    "mask_group_min_patches": 16,
    "processor_class": "FlavaProcessor",
    "resample": 3,
    "size": 224,
    "total_mask_patches": 75,
}
# Both orientations; 427 px makes an odd crop margin after the resize (335 - 224), where the conventions differ.
SIZES = [(640, 480), (480, 640), (640, 427), (427, 640)]
GREY_LEVEL = 1 / 255 / min(CLIP_STD)  # one uint8 step after CLIP's normalisation


def textured(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 1000 + height)
    y, x = np.mgrid[0:height, 0:width]
    gradients = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
    noise = rng.integers(0, 256, (height, width, 3))
    return Image.fromarray((0.5 * noise + 0.5 * gradients).astype(np.uint8))


def max_diff(what: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    diff = (ours - theirs.float()).abs().max().item()
    print(f"parity {what}: max |diff| = {diff:.3g}")
    return diff


def saved_checkpoint(registry, root: Path, preset: str, processor: dict) -> Path:
    """The tiny preset's model and tokenizer saved as an HF directory with the real processor config beside."""
    model = build_model(registry.model(preset))
    model.model.save_pretrained(root)
    model.tokenizer.save_pretrained(root)
    (root / PROCESSOR_FILE).write_text(json.dumps(processor))
    return root


def from_checkpoint(registry, preset: str, root: Path):
    items = [f"model.checkpoint={root}", "model.random_init=false", "model.tokenizer=null"]
    return build_model(registry.model(preset, parse_overrides(items)["model"]))


@pytest.mark.parametrize(
    "preset, processor, hf_class",
    [("clip-tiny", CLIP_PROCESSOR, "CLIPImageProcessor"), ("flava-tiny", FLAVA_PROCESSOR, "FlavaImageProcessor")],
)
def test_hf_checkpoints_preprocess_as_their_image_processors(registry, tmp_path, preset, processor, hf_class):
    import transformers

    root = saved_checkpoint(registry, tmp_path / "ckpt", preset, processor)
    wrapper = from_checkpoint(registry, preset, root)
    assert wrapper.preprocess_source == str(root / PROCESSOR_FILE)
    assert wrapper.preprocess.image_size == 224  # the file's, not the tiny preset's 32
    pil, tv = getattr(transformers, f"{hf_class}Pil"), getattr(transformers, hf_class)
    for size in (None, 480):
        at = {} if size is None else {"size": size, "crop_size": size}
        references = {b: cls.from_dict({**processor, **at}) for b, cls in [("pil", pil), ("torchvision", tv)]}
        transform = wrapper.image_transform(image_size=size)
        for w, h in SIZES:
            image = textured(w, h)
            ours = transform(image)
            theirs = references["pil"](image, return_tensors="pt").pixel_values[0]
            assert max_diff(f"{hf_class} (PIL backend) {w}x{h} at {size or 224}", ours, theirs) <= 1e-6
            # transformers 5's default backend resizes uint8 tensors with torch's antialiased kernels, which
            # approximate PIL's filter: measured at most 1 grey level here, 2-7 on a few pixels of upsampled
            # axes, 0.0035-0.27 levels on average. A wrong crop offset or filter would be tens of levels.
            theirs = references["torchvision"](image, return_tensors="pt").pixel_values[0]
            diff = max_diff(f"{hf_class} (torchvision backend) {w}x{h} at {size or 224}", ours, theirs)
            mean = (ours - theirs).abs().mean().item()
            assert diff <= 10 * GREY_LEVEL and mean <= 0.5 * GREY_LEVEL, (w, h, size, diff, mean)


def test_presets_state_what_the_real_processor_configs_say(registry, tmp_path):
    """FLAVA resizes to a square (all of a non-square image, aspect changed); CLIP the short side, then crops."""
    for name, processor in [("clip", CLIP_PROCESSOR), ("flava", FLAVA_PROCESSOR)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / PROCESSOR_FILE).write_text(json.dumps(processor))
        preset = registry.model(name).preprocess
        assert from_processor_config(tmp_path / name / PROCESSOR_FILE, preset) == preset, name
    assert registry.model("clip").preprocess.resize_mode == "shortest_edge"
    assert registry.model("flava").preprocess.resize_mode == "square"


def test_beit3_preprocesses_as_unilm(registry):
    from torchvision import transforms as T

    base = to_dict(registry.model("beit3-base").preprocess)
    wrapper = build_model(registry.model("beit3-tiny", {"preprocess": base}))
    assert wrapper.preprocess_source == "preset"
    for size in (224, 480):  # unilm fine-tunes VQAv2 with --input_size 480
        unilm = T.Compose(
            [
                T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),  # interpolation=3 in unilm
                T.ToTensor(),
                T.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),  # timm's IMAGENET_INCEPTION_MEAN/STD
            ]
        )
        transform = wrapper.image_transform(image_size=size)
        for w, h in SIZES:
            image = textured(w, h)
            assert max_diff(f"unilm BEiT-3 {w}x{h} at {size}", transform(image), unilm(image)) <= 1e-6


def open_clip_transform_module() -> types.ModuleType | None:
    """open_clip's `transform.py` (with its `constants`/`utils`) under a private package name."""
    try:
        src = Path(distribution("open_clip_torch").locate_file("open_clip"))
    except PackageNotFoundError:
        return None
    name = "_open_clip_reference"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(src)]  # submodules resolve here; the real __init__ never runs
        sys.modules[name] = package
    try:
        return importlib.import_module(f"{name}.transform")
    except ImportError:
        return None


def test_openflamingo_preprocesses_as_open_clip(registry):
    open_clip = open_clip_transform_module()
    if open_clip is None:
        pytest.skip("open_clip_torch is not installed (pip install --no-deps -r requirements/parity.txt)")
    real = to_dict(registry.model("flamingo").preprocess)
    wrapper = build_model(registry.model("flamingo-tiny", {"preprocess": real}))
    assert wrapper.preprocess_source == "preset"  # OpenFlamingo's checkpoint carries no processor config
    for size in (224, 480):
        # What OpenFlamingo's factory gets from open_clip.create_model_and_transforms("ViT-L-14", "openai").
        reference = open_clip.image_transform(size, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
        transform = wrapper.image_transform(image_size=size)
        for w, h in SIZES:
            image = textured(w, h)
            assert max_diff(f"open_clip {w}x{h} at {size}", transform(image), reference(image)) <= 1e-6
