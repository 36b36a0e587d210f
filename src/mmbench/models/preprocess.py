"""Image preprocessing: the preset's `preprocess` block, or the checkpoint's own `preprocessor_config.json`.

`ImageTransform` is what every wrapper's `image_transform` returns: PIL image -> RGB -> resize (PIL, the filter
the config names) -> centre crop -> [0, 1] tensor -> normalise. It equals, on the same PIL image:
- HF's PIL-backend image processors (`CLIPImageProcessorPil`, `FlavaImageProcessorPil`) with `crop_rounding:
  floor`, bit for bit. HF 5's default (torchvision) backend resizes uint8 tensors instead of PIL images and
  differs by at most one grey level (~0.015 after CLIP's normalisation);
- unilm BEiT-3's eval transform and open_clip's (OpenFlamingo's) with `crop_rounding: round` (torchvision).
Proven in tests/test_preprocess_parity.py.

Where the numbers come from (`resolve_preprocess`): a checkpoint that is a directory or a hub repo and carries a
`preprocessor_config.json` (or transformers 5's `processor_config.json` with a nested `image_processor`) supplies
them, read through the HF image-processor class the file names (which knows that class's defaults and the file's
legacy spellings, e.g. CLIP's `size: 224` = shortest edge and FLAVA's `size: 224` = a 224x224 square); everything
else uses the preset. The answer is recorded as `preprocess_source`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from mmbench.errors import ConfigError
from mmbench.schema import ModelConfig, PreprocessConfig

log = logging.getLogger("mmbench")

PROCESSOR_FILE = "preprocessor_config.json"
# transformers 5's `ProcessorMixin.save_pretrained` (CLIPProcessor, ...) writes the image processor's settings nested
# under "image_processor" in this file instead, and its image processors read that first.
NESTED_PROCESSOR_FILE = "processor_config.json"
RESIZE_MODES = ("shortest_edge", "square")
CROP_ROUNDINGS = ("round", "floor")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
_PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PRESET = "preset"


@dataclass(frozen=True)
class ResolvedPreprocess:
    config: PreprocessConfig
    source: str  # "preset", or the processor file it was read from (a path, or hf:<repo>@<commit>/<file>)


class ImageTransform:
    """PIL image -> (3, S, S) float tensor. A class, not a closure, so that loader workers can pickle it.

    `image_size` (a task's override, e.g. VQA at 480) scales the resize with the crop, keeping their ratio."""

    def __init__(self, p: PreprocessConfig, image_size: int | None = None):
        check_preprocess(p)
        self.size = image_size or p.image_size
        self.resize = p.resize if image_size is None else round(p.resize * image_size / p.image_size)
        self.mode, self.rounding = p.resize_mode, p.crop_rounding
        self.interpolation = p.interpolation
        self.mean, self.std = list(p.mean), list(p.std)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize; the long side is truncated as torchvision and HF truncate it."""
        if self.mode == "square":
            return self.resize, self.resize
        short, long = min(width, height), max(width, height)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if width <= height else (new_long, self.resize)

    def __call__(self, image: Any) -> Tensor:
        from PIL import Image
        from torchvision.transforms import functional as F

        if getattr(image, "mode", "RGB") != "RGB":
            image = image.convert("RGB")
        w, h = self.resized_size(*image.size)
        if (w, h) != image.size:
            image = image.resize((w, h), resample=Image.Resampling[self.interpolation.upper()])
        top, left = self._offset(h), self._offset(w)
        image = image.crop((left, top, left + self.size, top + self.size))
        return F.normalize(F.to_tensor(image), self.mean, self.std)  # (3, S, S)

    def _offset(self, length: int) -> int:
        margin = length - self.size
        return margin // 2 if self.rounding == "floor" else int(round(margin / 2.0))

    def __repr__(self) -> str:
        return (
            f"ImageTransform(resize={self.resize} {self.mode} {self.interpolation}, crop={self.size} "
            f"({self.rounding}), mean={self.mean}, std={self.std})"
        )


def check_preprocess(p: PreprocessConfig, where: str = "preprocess") -> None:
    """Values omegaconf cannot check (choices, ranges); one line naming the key, with close matches."""
    for key, choices in (("resize_mode", RESIZE_MODES), ("crop_rounding", CROP_ROUNDINGS)):
        _choice(where, key, getattr(p, key), choices)
    _choice(where, "interpolation", p.interpolation, INTERPOLATIONS)
    if p.image_size < 1 or p.resize < p.image_size:
        raise ConfigError(
            f"key '{where}.resize': {p.resize} must be at least image_size ({p.image_size}), which must be positive"
        )
    if len(p.mean) != 3 or len(p.std) != 3 or not all(s > 0 for s in p.std):
        raise ConfigError(f"key '{where}.mean'/'{where}.std': need 3 values each, std positive")


def _choice(where: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"key '{where}.{key}': {value!r} is not one of {', '.join(choices)}{hint}")


# ---- the checkpoint's own processor config ------------------------------------------------------------------
class _Unknown:
    """Whether the checkpoint has a processor file cannot be told without fetching from the hub."""


UNKNOWN = _Unknown()


def resolve_preprocess(cfg: ModelConfig, fetch: bool = True) -> ResolvedPreprocess | None:
    """The preprocessing the wrapper applies, and where it came from. `fetch=False` never downloads: it returns
    None when a hub checkpoint's processor file is neither cached nor known to be absent (what the feature cache
    key needs: it must not guess what a later build would fetch)."""
    found = processor_file(cfg, fetch)
    if found is UNKNOWN:
        if not fetch:
            return None
        why = f"the checkpoint's {PROCESSOR_FILE} could not be fetched"
        log.warning("model %r: %s; using the preset's preprocessing", cfg.name, why)
        return ResolvedPreprocess(cfg.preprocess, f"{PRESET} ({why})")
    if found is None:
        return ResolvedPreprocess(cfg.preprocess, PRESET)
    path, label = found
    return ResolvedPreprocess(from_processor_config(path, cfg.preprocess), label)


def processor_file(cfg: ModelConfig, fetch: bool) -> tuple[Path, str] | _Unknown | None:
    """(file, label) of the checkpoint's processor config; None when it has none (random-init presets too);
    UNKNOWN when a hub repo's cannot be known without fetching and `fetch` is False, or fetching failed."""
    from mmbench.models.base import is_local_path

    if cfg.random_init or not cfg.checkpoint:
        return None
    source = str(cfg.checkpoint)
    if "://" in source:  # a release URL is a single weights file (BEiT-3)
        return None
    if is_local_path(source):
        folder = Path(source).expanduser()
        for path in (folder / NESTED_PROCESSOR_FILE, folder / PROCESSOR_FILE):  # transformers' order
            if path.is_file() and (path.name == PROCESSOR_FILE or _nests_image_processor(path)):
                return path, str(path)
        return None
    return _hub_processor_file(source, cfg.revision, fetch)


def _nests_image_processor(path: Path) -> bool:
    """Whether a processor_config.json holds an image processor (one written by a tokenizer-only processor
    does not)."""
    import json

    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")).get("image_processor"), dict)
    except (OSError, ValueError, AttributeError):
        return False  # unreadable: transformers would fail on it too, from_processor_config names it


def _hub_processor_file(repo: str, revision: str | None, fetch: bool) -> tuple[Path, str] | _Unknown | None:
    """A cached nested processor file first (as transformers reads), then preprocessor_config.json. The nested file
    is fetched only for a repo without the latter (every repo saved before transformers 5 has it); one that is
    neither cached nor fetchable counts as absent, as a snapshot downloaded whole (`hf download`) holds it if the
    repo has it."""
    nested = _hub_file(repo, NESTED_PROCESSOR_FILE, revision, fetch=False)
    if isinstance(nested, Path) and _nests_image_processor(nested):
        return nested, f"hf:{repo}@{nested.parent.name}/{NESTED_PROCESSOR_FILE}"
    found = _hub_file(repo, PROCESSOR_FILE, revision, fetch)
    if found is None and nested is UNKNOWN and fetch:  # a repo saved by transformers 5 may have only the nested one
        nested = _hub_file(repo, NESTED_PROCESSOR_FILE, revision, fetch)
        found = nested if isinstance(nested, Path) and _nests_image_processor(nested) else None
    if not isinstance(found, Path):
        return found
    return found, f"hf:{repo}@{found.parent.name}/{found.name}"  # snapshots/<commit>/<file>


def _hub_file(repo: str, name: str, revision: str | None, fetch: bool) -> Path | _Unknown | None:
    """The cached file (fetched when `fetch` and not cached); None: the repo has none; UNKNOWN: cannot tell now."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import RemoteEntryNotFoundError
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    try:
        cached = try_to_load_from_cache(repo, name, revision=revision)
    except ValueError:  # not a repo id: loading the weights reports that
        return UNKNOWN
    if cached is _CACHED_NO_EXIST:  # the hub said so before, for this commit
        return None
    if cached is None:
        if not fetch:
            return UNKNOWN
        try:
            cached = hf_hub_download(repo, name, revision=revision)
        except RemoteEntryNotFoundError:  # the repo has no such file (now recorded in the cache)
            return None
        except (OSError, ValueError):  # offline and not cached, unreachable, unknown repo: unknowable now
            return UNKNOWN
    return Path(cached)


def from_processor_config(path: Path, preset: PreprocessConfig) -> PreprocessConfig:
    """An HF image processor's eval settings as a `PreprocessConfig`; settings it cannot express are errors
    naming the file and the setting (rather than a silently different preprocessing)."""
    from transformers import AutoImageProcessor

    try:  # the PIL backend: the processors' original implementation, the one `ImageTransform` equals
        proc = AutoImageProcessor.from_pretrained(str(path.parent), backend="pil", local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a readable image processor config ({str(e).splitlines()[0]})") from None

    def unsupported(setting: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: {setting}: {why}; mmbench cannot reproduce this preprocessing")

    size = dict(proc.size or {})  # SizeDict iterates over its set fields
    crop = dict(proc.crop_size or {}) if getattr(proc, "do_center_crop", False) else None
    if not getattr(proc, "do_resize", True):
        raise unsupported("do_resize", "false (images would keep whatever size they have)")
    if set(size) == {"shortest_edge"}:
        mode, resize = "shortest_edge", int(size["shortest_edge"])
    elif set(size) == {"height", "width"} and size["height"] == size["width"]:
        mode, resize = "square", int(size["height"])
    else:
        raise unsupported("size", f"{size} is neither a shortest edge nor a square")
    if crop is None and mode == "shortest_edge":
        raise unsupported("do_center_crop", "false after a shortest-edge resize gives non-square images")
    if crop is not None and (set(crop) != {"height", "width"} or crop["height"] != crop["width"]):
        raise unsupported("crop_size", f"{crop} is not a square")
    image_size = resize if crop is None else int(crop["height"])
    if image_size > resize:
        raise unsupported("crop_size", f"{image_size} exceeds the resize to {resize} (HF would pad)")
    if not proc.do_rescale or not math.isclose(proc.rescale_factor, 1 / 255, rel_tol=1e-6):
        raise unsupported("rescale_factor", "pixels must be scaled by 1/255")
    mean, std = (list(proc.image_mean), list(proc.image_std)) if proc.do_normalize else ([0.0] * 3, [1.0] * 3)
    resample = proc.resample if proc.resample is not None else 2  # HF's resize default: bilinear
    interpolation = _PIL_RESAMPLE_NAMES.get(int(resample))
    if interpolation is None:
        raise unsupported("resample", f"{resample!r} is not a PIL filter")
    return dataclasses.replace(
        preset,
        image_size=image_size,
        resize=resize,
        resize_mode=mode,
        interpolation=interpolation,
        crop_rounding="floor",  # HF's center_crop: top = (height - crop) // 2
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
    )
