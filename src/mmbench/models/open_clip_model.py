"""open_clip models (`open_clip:<arch>[/<tag>]`), with open_clip's own tokenizer and transforms.

What each capability returns (proven equal to open_clip's own `encode_image` / `encode_text` on randomised weights
in tests/test_model_families.py):
- IMAGE: `encode_image(x)` un-normalised: the vision tower's pooled output *after* its projection (open_clip's
  `visual` includes `proj`), what CLIP_benchmark's linear probe fits on. Note the difference from the HF `clip`
  preset, whose IMAGE is the pooled state *before* `visual_projection`; the two do not compare one to one.
- TEXT: `encode_text(t)` un-normalised (the pooled token after `text_projection`).
- FUSION: late fusion concat(IMAGE, TEXT), the FLAVA paper's CLIP baseline.
- CONTRASTIVE: `encode_image(x, normalize=True)` / `encode_text(t, normalize=True)`, what open_clip's logits use.
  Sigmoid-trained open_clip models (SigLIP ports: `logit_bias`) rank by cosine too: scale > 0 and one shared bias.

Tokenizer: `open_clip.get_tokenizer(...)` for the model (CLIP's BPE, or the HF tokenizer a config names), padded
to `text_length()`: the model's `context_length` unless a shorter length is asked for. Transforms: open_clip's
`image_transform_v2` over the model's preprocess config (`get_model_preprocess_cfg`: the pretrained tag's, or the
config file's), with `arch.image_size` or a task's `image_size` as the size. `shortest` and `squash` resize modes
map onto `PreprocessConfig` (recorded in `preprocess`); `longest` (resize and pad) does not (the transform is still
open_clip's; `preprocess_source` names the full config).

Weights (`arch.model_name` is a built-in open_clip config such as `ViT-B-32`):
- `arch.pretrained: <tag>`: open_clip's pretrained weights for that tag (hub cache or download);
- `checkpoint: <file>`: a local state dict (`open_clip.load_checkpoint`: safetensors or `torch.load(weights_only)`);
- `checkpoint: <dir>`: a folder in open_clip's hub layout, `open_clip_config.json` (`model_cfg`, `preprocess_cfg`)
  beside the weights (`local-dir:` in open_clip), `checkpoint: hf-hub:<repo>` the same on the hub;
- `arch.model_cfg: {...}`: an architecture given inline instead of a built-in name (tiny random models).

Any image size: open_clip's ViT tower has a fixed position table; for another patch grid the wrapper runs it with the
table resized as open_clip resizes checkpoints (`resize_pos_embed`: bicubic, antialiased, [CLS] row kept), through
`torch.func.functional_call` (no state is changed). Other towers run at whatever size they accept.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmbench.errors import CheckpointError, ConfigError
from mmbench.models.base import Capability, ModelWrapper, is_local_path, parse_arch
from mmbench.schema import ModelConfig, PreprocessConfig

WRAPPER = "mmbench.models.open_clip_model:OpenClipWrapper"
HF_HUB, LOCAL_DIR, CONFIG_FILE = "hf-hub:", "local-dir:", "open_clip_config.json"
INSTALL = "open_clip models need the optional extra: pip install open_clip_torch (or pip install 'mmbench[open_clip]')"


@dataclass
class OpenClipArch:
    model_name: str = ""  # a built-in open_clip config (open_clip.list_models())
    pretrained: str | None = None  # a pretrained tag of that config (open_clip.list_pretrained())
    model_cfg: dict[str, Any] = field(default_factory=dict)  # an inline model config instead of model_name
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)  # open_clip preprocess overrides (mean, std, ...)
    image_size: int | None = None  # eval image size; None = the model's


def import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise ConfigError(INSTALL) from None
    return open_clip


class OpenClipWrapper(ModelWrapper):
    capabilities = Capability.IMAGE | Capability.TEXT | Capability.FUSION | Capability.CONTRASTIVE
    arch_schema = OpenClipArch
    libraries = ("open_clip_torch",)  # their versions are part of the weights fingerprint

    def __init__(self, cfg: ModelConfig, model: Any, tokenizer: Any):
        # The checkpoint is an open_clip source, never an HF image-processor folder (see TimmWrapper)
        super().__init__(dataclasses.replace(cfg, checkpoint=None))
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.arch = parse_arch(cfg, OpenClipArch)
        embed = _output_dim(model)
        self.feature_dims = {"image": embed, "text": embed, "pair": 2 * embed, "embedding": embed}
        self.max_text_positions = getattr(model, "context_length", None)
        self.preprocess_cfg = self._preprocess_cfg(self.arch.image_size)
        self.preprocess = to_preprocess_config(self.preprocess_cfg)
        version = import_open_clip().__version__
        self.preprocess_source = f"open_clip {version} preprocess config: {self.preprocess_cfg}"

    @classmethod
    def check_config(cls, cfg: ModelConfig) -> None:
        super().check_config(cfg)
        arch = parse_arch(cfg, OpenClipArch)
        folder = bool(cfg.checkpoint) and (cfg.checkpoint.startswith(HF_HUB) or Path(cfg.checkpoint).is_dir())
        if not folder and bool(arch.model_name) == bool(arch.model_cfg):
            raise ConfigError(f"model {cfg.name!r}: key 'arch': give exactly one of model_name and model_cfg")
        if not (folder or cfg.random_init or cfg.checkpoint or arch.pretrained):
            raise ConfigError(
                f"model {cfg.name!r}: no weights: set arch.pretrained (a tag), checkpoint (a file or folder) "
                "or random_init"
            )
        if dataclasses.asdict(cfg.preprocess) != dataclasses.asdict(PreprocessConfig()):
            raise ConfigError(
                f"model {cfg.name!r}: key 'preprocess': open_clip models use open_clip's preprocess config; "
                "set arch.image_size or arch.preprocess_cfg instead"
            )

    @classmethod
    def weight_sources(cls, cfg: ModelConfig, memo_dir: Path | None = None) -> dict[str, str | None]:
        """The identity of the weights (models/fingerprint.py), without building: a file's or folder's content, an
        `hf-hub:` repo's cached commit, or the cached commit of the hub repo a pretrained tag downloads from (None
        when not cached yet, or for tags open_clip downloads from a URL)."""
        from mmbench.models.fingerprint import hub_commit, source_identity

        if cfg.checkpoint and cfg.checkpoint.startswith(HF_HUB):
            return {"checkpoint": hub_commit(cfg.checkpoint.removeprefix(HF_HUB), cfg.revision)}
        if cfg.checkpoint:
            return {"checkpoint": source_identity(cfg.checkpoint, None, memo_dir)}
        arch = parse_arch(cfg, OpenClipArch)
        tag = import_open_clip().get_pretrained_cfg(arch.model_name, arch.pretrained or "")
        repo = "/".join((tag.get("hf_hub") or "").split("/")[:2])  # "org/repo/" or "org/repo/file"
        return {"pretrained": hub_commit(repo, None) if repo else None}

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> OpenClipWrapper:
        open_clip = import_open_clip()
        arch = parse_arch(cfg, OpenClipArch)
        with _model_source(cfg, arch) as (name, pretrained, weights_file):
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(cfg.init_seed)
                    model = open_clip.create_model(
                        name,
                        pretrained=pretrained,
                        load_weights=not cfg.random_init,
                        force_preprocess_cfg=arch.preprocess_cfg or None,
                        weights_only=True,
                    )
                if weights_file is not None:
                    open_clip.load_checkpoint(model, weights_file, strict=True, weights_only=True)
                tokenizer = open_clip.get_tokenizer(name)
            except (RuntimeError, OSError, ValueError, KeyError) as e:
                where = cfg.checkpoint or arch.pretrained or name
                raise CheckpointError(f"model {cfg.name!r}: open_clip cannot load {where}: {_first_line(e)}") from None
        return cls(cfg, model, tokenizer)

    # ---- preprocessing -----------------------------------------------------------------------------------------
    def _preprocess_cfg(self, image_size: int | None) -> dict[str, Any]:
        pp = dict(import_open_clip().get_model_preprocess_cfg(self.model))
        return {**pp, "size": image_size} if image_size else pp

    def image_transform(self, train: bool = False, image_size: int | None = None) -> Callable[[Any], Tensor]:
        """open_clip's eval transform (`train` adds nothing, as for every wrapper) at the model's or the given size."""
        import_open_clip()
        from open_clip.transform import PreprocessCfg, image_transform_v2

        pp = self.preprocess_cfg if image_size is None else self._preprocess_cfg(image_size)
        return image_transform_v2(PreprocessCfg(**pp), is_train=False)

    def tokenize(
        self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None
    ) -> dict[str, Tensor]:
        if pairs is not None:  # one text tower without segment embeddings: join the pair as one text
            texts = [f"{a} {b}" for a, b in zip(texts, pairs)]
        return {"input_ids": self.tokenizer(list(texts), context_length=self.text_length(max_length))}  # (B, L)

    # ---- features ----------------------------------------------------------------------------------------------
    def _visual(self, pixel_values: Tensor) -> Tensor:
        """(B, E) `model.visual(x)` at any patch grid (module doc)."""
        visual = self.model.visual
        table = getattr(visual, "positional_embedding", None)
        grid, patch = getattr(visual, "grid_size", None), getattr(visual, "patch_size", None)
        if table is None or grid is None or patch is None:
            return visual(pixel_values)
        new_grid = (pixel_values.shape[-2] // patch[0], pixel_values.shape[-1] // patch[1])
        if tuple(new_grid) == tuple(grid):
            return visual(pixel_values)
        cls_row, rows = table[:1], table[1:]  # (1, W), (gh*gw, W)
        rows = rows.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)  # (1, W, gh, gw)
        rows = F.interpolate(rows, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
        rows = rows.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1)  # (GH*GW, W)
        resized = torch.cat([cls_row, rows], dim=0)
        return torch.func.functional_call(visual, {"positional_embedding": resized}, (pixel_values,))

    def image_features(self, pixel_values: Tensor) -> Tensor:
        return self._visual(pixel_values)  # (B, E): encode_image, un-normalised

    def text_features(self, **tokens: Tensor) -> Tensor:
        return self.model.encode_text(tokens["input_ids"])  # (B, E): un-normalised

    def pair_features(self, pixel_values: Tensor, **tokens: Tensor) -> Tensor:
        return torch.cat([self.image_features(pixel_values), self.text_features(**tokens)], dim=-1)  # (B, 2E)

    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        return F.normalize(self.image_features(pixel_values), dim=-1)  # (B, E)

    def text_embeddings(self, **tokens: Tensor) -> Tensor:
        return F.normalize(self.text_features(**tokens), dim=-1)  # (B, E)


@contextmanager
def _model_source(cfg: ModelConfig, arch: OpenClipArch) -> Iterator[tuple[str, str | None, str | None]]:
    """(open_clip model name, pretrained tag or file, a weights file to load after creation) for the preset. An
    inline `model_cfg` is written as an open_clip config folder (`local-dir:`) for the factory to read."""
    ckpt = None if cfg.random_init else cfg.checkpoint
    if ckpt and ckpt.startswith(HF_HUB):
        yield ckpt, None, None
        return
    if ckpt and is_local_path(ckpt):
        path = Path(ckpt).expanduser()
        if not path.exists():
            raise CheckpointError(f"model {cfg.name!r}: checkpoint path {path} does not exist")
        if path.is_dir():
            if not (path / CONFIG_FILE).is_file():
                raise CheckpointError(f"model {cfg.name!r}: {path} has no {CONFIG_FILE} (open_clip's folder layout)")
            yield f"{LOCAL_DIR}{path}", None, None
            return
    elif ckpt:
        raise ConfigError(
            f"model {cfg.name!r}: key 'checkpoint': {ckpt!r} is neither a local file or folder nor {HF_HUB}<repo>"
        )
    weights = str(Path(ckpt).expanduser()) if ckpt else None
    if arch.model_name:
        yield arch.model_name, weights or (None if cfg.random_init else arch.pretrained), None
        return
    with tempfile.TemporaryDirectory(prefix="mmbench-open-clip-") as folder:
        (Path(folder) / CONFIG_FILE).write_text(json.dumps({"model_cfg": arch.model_cfg}))
        yield f"{LOCAL_DIR}{folder}", None, weights


def _output_dim(model: Any) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.nn.Parameter):
        return proj.shape[1]
    return model.visual.output_dim


def to_preprocess_config(pp: dict[str, Any]) -> PreprocessConfig:
    """open_clip's preprocess config as a `PreprocessConfig`, as far as it maps (module doc)."""
    size = pp["size"] if isinstance(pp["size"], int) else pp["size"][0]
    interpolation = pp.get("interpolation", "bicubic")
    return PreprocessConfig(
        image_size=int(size),
        resize=int(size),
        resize_mode="square" if pp.get("resize_mode") == "squash" else "shortest_edge",
        interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bicubic",
        crop_rounding="round",  # torchvision's CenterCrop
        mean=[float(m) for m in pp["mean"]],
        std=[float(s) for s in pp["std"]],
    )


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def resolve_spec(ident: str) -> dict[str, Any]:
    """`open_clip:<arch>[/<tag>]` (or `open_clip:hf-hub:<repo>`, or `open_clip:<folder>` in open_clip's hub layout)
    -> the preset mapping, without building the model.
    The caller adds `name`. Unknown configs or tags are a `ConfigError` with close matches."""
    open_clip = import_open_clip()
    from mmbench.models.arch import did_you_mean

    rest = ident.removeprefix("open_clip:")
    if rest.startswith(HF_HUB):
        repo = rest.removeprefix(HF_HUB)
        return {"wrapper": WRAPPER, "checkpoint": rest, "description": f"open_clip model from the hub repo {repo}"}
    if Path(rest).expanduser().is_dir():  # a folder in open_clip's hub layout: open_clip_config.json + weights
        folder = Path(rest).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ConfigError(f"open_clip folder {folder} holds no open_clip_config.json (open_clip's hub layout)")
        return {"wrapper": WRAPPER, "checkpoint": str(folder), "description": f"open_clip model in {folder}"}
    model_name, _, tag = rest.partition("/")
    if model_name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {model_name!r}{did_you_mean(model_name, open_clip.list_models())}")
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if tag and tag not in tags:
        raise ConfigError(f"open_clip model {model_name!r} has no pretrained tag {tag!r} (tags: {', '.join(tags)})")
    if not tag and len(tags) != 1:  # never pick among several trainings silently
        have = f"name one of its tags: {', '.join(tags)}" if tags else "it has none; name a checkpoint file"
        raise ConfigError(f"open_clip model {model_name!r}: which pretrained weights? {have} (open_clip:ARCH/TAG)")
    tag = tag or tags[0]
    return {
        "wrapper": WRAPPER,
        "checkpoint": None,
        "arch": {"model_name": model_name, "pretrained": tag},
        "description": f"open_clip {model_name} pretrained on {tag}",
    }
