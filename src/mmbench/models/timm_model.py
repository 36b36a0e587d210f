"""timm image backbones (`timm:<name>`): IMAGE only, with timm's own preprocessing.

IMAGE: `timm.create_model(name, num_classes=0)(pixels)`, timm's pooled, pre-classifier features (`forward_head` with
the classifier reset to identity: the [CLS] token or average pool after the final norm, whatever the model's
`global_pool` is, plus any `fc_norm`/pre-logits the architecture has). Proven equal to timm's own forward on
randomised weights in tests/test_model_families.py.

Weights: `checkpoint: null` takes timm's pretrained weights for the name (from the Hugging Face hub / its cache,
`pretrained=True`); a local `.safetensors`/`.pth`/`.bin` file is loaded through timm's pretrained path
(`pretrained_cfg_overlay={file: ...}`: its checkpoint filter, classifier removal and `torch.load(weights_only=True)`
or safetensors); `hf-hub:org/repo` names a timm model repo (architecture and weights from it); `random_init: true`
builds the architecture with seeded random weights. `arch.kwargs` go to `create_model` (tiny depth/width/img_size);
`arch.pretrained_cfg_overlay` overrides pretrained-config fields (input size, crop, mean/std).

Preprocessing: timm's `resolve_data_config(model=...)` + `create_transform(..., is_training=False)`: the model's
`pretrained_cfg`, not copied values. `arch.image_size` (or a task's `image_size`, e.g. VQA at 480) replaces the
input size; timm keeps `crop_pct`, so the resize scales with it. The preset's `preprocess` block is not used; the
resolved data config is recorded in `preprocess` / `preprocess_source`. It maps exactly onto `PreprocessConfig` for
timm's `center` crop mode (short side to floor(size / crop_pct), centre crop, torchvision rounding) and `squash`
(square resize, then crop); `border` mode and non-square input sizes do not map (the transform is still timm's, and
`preprocess_source` names the full config).

Any image size: models that take `dynamic_img_size` (timm's ViT family) are built with it, so their position
tables are interpolated to each input's patch grid; convolutional models take any size anyway.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmbench.errors import CheckpointError, ConfigError
from mmbench.models.base import Capability, ModelWrapper, is_local_path, parse_arch
from mmbench.schema import ModelConfig, PreprocessConfig

WRAPPER = "mmbench.models.timm_model:TimmWrapper"
HF_HUB = "hf-hub:"


@dataclass
class TimmArch:
    model_name: str = ""  # a timm model name, optionally with a pretrained tag: "vit_base_patch16_224.augreg_in21k"
    kwargs: dict[str, Any] = field(default_factory=dict)  # create_model kwargs (depth, embed_dim, img_size, ...)
    pretrained_cfg_overlay: dict[str, Any] = field(default_factory=dict)  # timm pretrained-config overrides
    image_size: int | None = None  # eval input size; None = the model's data config


class TimmWrapper(ModelWrapper):
    capabilities = Capability.IMAGE
    arch_schema = TimmArch
    libraries = ("timm",)  # their versions are part of the weights fingerprint (models/fingerprint.py)

    def __init__(self, cfg: ModelConfig, model: Any):
        # The checkpoint is a timm weights source (a file or an hf-hub: repo), never an HF image-processor folder:
        # the base class must not look for a preprocessor_config.json there.
        super().__init__(dataclasses.replace(cfg, checkpoint=None))
        self.cfg = cfg
        self.model = model
        self.arch = parse_arch(cfg, TimmArch)
        self.feature_dims = {"image": model.num_features}
        self.data_config = self._data_config(self.arch.image_size)
        self.preprocess = to_preprocess_config(self.data_config)
        self.preprocess_source = f"timm {_timm_version()} data config of {self._name()}: {self.data_config}"

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        super().check_config(cfg)
        arch = parse_arch(cfg, TimmArch)
        if not arch.model_name and not (cfg.checkpoint or "").startswith(HF_HUB):
            raise ConfigError(f"model {cfg.name!r}: key 'arch.model_name' is empty (a timm model name)")
        if dataclasses.asdict(cfg.preprocess) != dataclasses.asdict(PreprocessConfig()):
            raise ConfigError(
                f"model {cfg.name!r}: key 'preprocess': timm models use timm's data config; "
                "set arch.image_size or arch.pretrained_cfg_overlay instead"
            )

    @classmethod
    def weight_sources(cls, cfg: ModelConfig, memo_dir: Path | None = None) -> dict[str, str | None]:
        """The identity of the weights (models/fingerprint.py), without building: a file's content, an `hf-hub:`
        repo's cached commit, or for `checkpoint: null` the cached commit of the hub repo timm takes the name's
        pretrained weights from (None when not cached yet, or when timm would download them from a URL)."""
        from mmbench.models.fingerprint import hub_commit, source_identity

        if cfg.checkpoint and cfg.checkpoint.startswith(HF_HUB):
            return {"checkpoint": hub_commit(cfg.checkpoint.removeprefix(HF_HUB), cfg.revision)}
        if cfg.checkpoint:
            return {"checkpoint": source_identity(cfg.checkpoint, None, memo_dir)}
        import timm

        arch = parse_arch(cfg, TimmArch)
        repo = arch.pretrained_cfg_overlay.get("hf_hub_id")
        if repo is None and timm.is_model(arch.model_name.split(".", 1)[0]):
            repo = timm.models.get_pretrained_cfg(arch.model_name).hf_hub_id
        return {"timm_pretrained": hub_commit(repo, None) if repo else None}

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> TimmWrapper:
        return cls(cfg, create(cfg, parse_arch(cfg, TimmArch)))

    def _name(self) -> str:
        return self.arch.model_name or str(self.cfg.checkpoint)

    def _data_config(self, image_size: int | None) -> dict[str, Any]:
        from timm.data import resolve_data_config

        args = {"input_size": (3, image_size, image_size)} if image_size else {}
        return resolve_data_config(args=args, model=self.model)

    def image_transform(self, train: bool = False, image_size: int | None = None) -> Callable[[Any], Tensor]:
        """timm's eval transform (`train` adds nothing, as for every wrapper); `image_size` replaces the input
        size and keeps `crop_pct`."""
        from timm.data import create_transform

        data_config = self.data_config if image_size is None else self._data_config(image_size)
        return create_transform(**data_config, is_training=False)

    def tokenize(self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None):
        raise self._missing(Capability.TEXT)

    def image_features(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values)  # (B, D): pooled, pre-classifier (num_classes=0)


def create(cfg: ModelConfig, arch: TimmArch) -> Any:
    """The timm model with the weights the preset names (see the module doc)."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, **arch.kwargs}
    overlay = dict(arch.pretrained_cfg_overlay)
    name, pretrained = arch.model_name, not cfg.random_init
    if not cfg.random_init and cfg.checkpoint:
        if cfg.checkpoint.startswith(HF_HUB):
            name = cfg.checkpoint
        elif is_local_path(cfg.checkpoint):
            path = Path(cfg.checkpoint).expanduser()
            if not path.is_file():
                raise CheckpointError(f"model {cfg.name!r}: checkpoint file {path} does not exist")
            # timm's own loader for a weights file; custom_load would route ViTs to the .npz reader
            overlay.update(file=str(path), custom_load=False)
        else:
            raise ConfigError(
                f"model {cfg.name!r}: key 'checkpoint': {cfg.checkpoint!r} is neither a local weights file nor "
                f"an {HF_HUB}<repo> id (null = timm's pretrained weights for arch.model_name)"
            )
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay

    def build(extra: dict[str, Any]) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            return timm.create_model(name, pretrained=pretrained, **kwargs, **extra)

    try:
        try:  # ViT-family models interpolate their position table per input; others reject the keyword
            return build({} if "dynamic_img_size" in kwargs else {"dynamic_img_size": True})
        except TypeError as e:
            if "dynamic_img_size" not in str(e):
                raise
            return build({})
    except RuntimeError as e:
        if "Unknown model" in str(e) or "not found" in str(e):
            raise ConfigError(f"model {cfg.name!r}: key 'arch.model_name': {str(e).splitlines()[0]}") from None
        raise CheckpointError(f"model {cfg.name!r}: timm could not load {name!r}: {str(e).splitlines()[0]}") from None
    except OSError as e:  # huggingface_hub: not cached and offline, or unreachable
        raise CheckpointError(
            f"model {cfg.name!r}: timm's pretrained weights for {name!r} are not in the local cache and could not "
            f"be fetched ({str(e).splitlines()[0]}); point checkpoint at a local weights file instead"
        ) from None


def to_preprocess_config(data_config: dict[str, Any]) -> PreprocessConfig:
    """timm's data config as a `PreprocessConfig`, as far as it maps (see the module doc): timm's eval resize is
    `floor(size / crop_pct)` (`transforms_factory.transforms_imagenet_eval`)."""
    _, height, _ = data_config["input_size"]
    crop_pct = data_config.get("crop_pct") or 1.0
    interpolation = data_config.get("interpolation", "bicubic")
    return PreprocessConfig(
        image_size=int(height),
        resize=max(int(height), math.floor(height / crop_pct)),
        resize_mode="square" if data_config.get("crop_mode") == "squash" else "shortest_edge",
        interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bicubic",
        crop_rounding="round",  # torchvision's CenterCrop
        mean=[float(m) for m in data_config["mean"]],
        std=[float(s) for s in data_config["std"]],
    )


def _timm_version() -> str:
    import timm

    return timm.__version__


def resolve_spec(ident: str) -> dict[str, Any]:
    """`timm:<name>` (or `timm:hf-hub:<repo>`) -> the preset mapping, without building the model. The caller adds
    `name`. An unknown name is a `ConfigError` with close matches."""
    import timm

    model_name = ident.removeprefix("timm:")
    if model_name.startswith(HF_HUB):
        return {
            "wrapper": WRAPPER,
            "checkpoint": model_name,
            "arch": {"model_name": ""},
            "description": f"timm model from the Hugging Face hub repo {model_name.removeprefix(HF_HUB)}",
        }
    architecture = model_name.split(".", 1)[0]
    if not timm.is_model(architecture):
        from mmbench.models.arch import did_you_mean

        raise ConfigError(f"unknown timm model {model_name!r}{did_you_mean(architecture, timm.list_models())}")
    pretrained = timm.models.get_pretrained_cfg(model_name) if timm.models.is_model_pretrained(architecture) else None
    tag = f"pretrained weights {pretrained.hf_hub_id or pretrained.tag}" if pretrained else "no pretrained weights"
    return {
        "wrapper": WRAPPER,
        "checkpoint": None,
        "arch": {"model_name": model_name},
        "description": f"timm {model_name} ({tag}); IMAGE = pooled pre-classifier features",
    }
