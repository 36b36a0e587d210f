"""`hf:<hub id or local dir>[@<revision>]`: a Hugging Face checkpoint -> the preset mapping of the wrapper that fits it.

Reads the checkpoint's `config.json` only, without building the model (a local folder: the file; a hub id: the local
Hugging Face cache, or, unless HF_HUB_OFFLINE is set, a download of that one file), and dispatches on its
`model_type` (`WRAPPERS`). A hub id's revision is pinned to the commit its config.json came from, so the weights,
tokenizer and processor files later loaded are of that same commit, and the config hash changes with it.
Text lengths come from the text encoder's positions (a CLIP-like config nests them in `text_config`); text-only
inputs are capped at 512 tokens. Preprocessing is left to the wrapper (`models.preprocess.resolve_preprocess` reads
the checkpoint's processor file); the preset block only carries the config's image size, for checkpoints without one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmbench.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.json"
TEXT_ONLY_CAP = 512  # BERT-style position tables (RoBERTa's 514 include its padding offset): 512 usable tokens
FLAVA_IMAGE_TEXT_LENGTH = 77  # FLAVA's own code: 77 tokens for image-text inputs, 512 for text-only ones

_TEXT_ENCODER = "mmbench.models.hf_encoders:HfTextEncoderWrapper"
_VISION_ENCODER = "mmbench.models.hf_encoders:HfVisionEncoderWrapper"
# The encoders whose position 0 is a summary token ([CLS] / <s>), which the hf_encoders wrappers take as the feature;
# hf_encoders takes these lists as its own TEXT_MODEL_TYPES / VISION_MODEL_TYPES. Pooled-only vision models
# (ConvNeXt, Swin) and HF's BEiT are not among them: they fall to the one-line "not supported".
TEXT_ENCODER_TYPES = (
    "albert", "bert", "camembert", "deberta", "deberta-v2", "distilbert", "electra", "mpnet", "roberta", "xlm-roberta",
)  # fmt: skip
VISION_ENCODER_TYPES = ("deit", "dinov2", "dinov2_with_registers", "vit")

# config.json's model_type -> the wrapper that runs it
WRAPPERS: dict[str, str] = {
    "clip": "mmbench.models.clip:ClipWrapper",
    "flava": "mmbench.models.flava:FlavaWrapper",
    "siglip": "mmbench.models.siglip:SiglipWrapper",
    **{t: _TEXT_ENCODER for t in TEXT_ENCODER_TYPES},
    **{t: _VISION_ENCODER for t in VISION_ENCODER_TYPES},
}


def resolve_spec(ident: str) -> dict[str, Any]:
    """The preset mapping (without `name`) for `hf:<ident>` (`--set model.revision=R` arrives as `<ident>@R`)."""
    source, rev = split_revision(ident)
    spec = f"hf:{ident}"
    if _is_local(source):
        if rev is not None:
            raise ConfigError(f"model {spec!r}: a revision ({rev!r}) names a hub commit, but {source} is a local path")
        folder = Path(source).expanduser().resolve()
        if not folder.is_dir():
            what = "is a file" if folder.is_file() else "does not exist"
            raise CheckpointError(f"model {spec!r}: {folder} {what} (expected a save_pretrained folder)")
        path, checkpoint = folder / CONFIG_FILE, str(folder)
        if not path.is_file():
            raise CheckpointError(f"model {spec!r}: {folder} has no {CONFIG_FILE} (expected a save_pretrained folder)")
    else:
        path, checkpoint = _hub_config(spec, source, rev), source
        rev = path.parent.name  # snapshots/<commit>/config.json: pin what was read
    config = _read_config(path)
    wrapper = _wrapper_for(config, path)
    data: dict[str, Any] = {
        "wrapper": wrapper,
        "description": f"{config.get('model_type')} checkpoint {checkpoint} (model spec)",
        "checkpoint": checkpoint,
        "revision": rev,
    }
    data.update(_text_lengths(config))
    size = _image_size(config)
    if size is not None:
        data["preprocess"] = {"image_size": size, "resize": size}
    return data


def split_revision(ident: str) -> tuple[str, str | None]:
    """`org/model@v1` -> ("org/model", "v1"); an existing local path keeps any '@' it has."""
    if _is_local(ident) and Path(ident).expanduser().exists():
        return ident, None
    source, sep, rev = ident.rpartition("@")
    return (source, rev or None) if sep and source else (ident, None)


def _is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def _hub_config(spec: str, repo: str, revision: str | None) -> Path:
    """The cached config.json of `repo` at `revision`, fetched (that file alone) when allowed and not cached."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    try:
        cached = try_to_load_from_cache(repo, CONFIG_FILE, revision=revision)
    except ValueError as e:  # huggingface_hub's repo-id validation
        raise ConfigError(f"model {spec!r}: {repo!r} is neither a local folder nor a hub id ({e})") from None
    if isinstance(cached, str):
        return Path(cached)
    if cached is _CACHED_NO_EXIST:
        raise CheckpointError(f"model {spec!r}: the hub repo {repo} has no {CONFIG_FILE} (not a transformers model)")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")
    at = f" at revision {revision!r}" if revision else ""
    if offline:
        raise CheckpointError(
            f"model {spec!r}: {repo}{at} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; fetch it "
            f"on a machine with network (`hf download {repo}`) and copy the cache, or use hf:/path/to/a/local/copy"
        )
    try:
        return Path(hf_hub_download(repo, CONFIG_FILE, revision=revision))
    except EntryNotFoundError:
        raise CheckpointError(f"model {spec!r}: the hub repo {repo}{at} has no {CONFIG_FILE}") from None
    except (OSError, ValueError) as e:  # unknown repo or revision, no network, gated repo
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"model {spec!r}: cannot fetch {repo}{at}/{CONFIG_FILE}: {first}") from None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def _wrapper_for(config: dict[str, Any], path: Path) -> str:
    model_type = config.get("model_type")
    if model_type in WRAPPERS:
        return WRAPPERS[model_type]
    supported = ", ".join(sorted(WRAPPERS))
    if not model_type:
        raise ConfigError(f"{path}: no 'model_type', so no config class to dispatch on; supported: {supported}")
    raise ConfigError(
        f"{path}: the checkpoint is a {_config_class(str(model_type))} (model_type {model_type!r}), which mmbench "
        f"cannot run; supported model types: {supported}"
    )


def _config_class(model_type: str) -> str:
    """`llama` -> `LlamaConfig`, from transformers' table of names (no model code is imported)."""
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:
        return "config"
    return CONFIG_MAPPING_NAMES.get(model_type, f"config unknown to transformers {_version()}")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "(absent)"


def _text_lengths(config: dict[str, Any]) -> dict[str, int]:
    """`max_text_length` (image-text inputs) and `text_only_max_length` from the text encoder's positions."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    positions = text.get("max_position_embeddings")
    if not isinstance(positions, int) or positions < 1:
        return {}
    text_only = min(positions, TEXT_ONLY_CAP)
    if config.get("model_type") == "flava":
        return {"max_text_length": min(positions, FLAVA_IMAGE_TEXT_LENGTH), "text_only_max_length": text_only}
    if "text_config" in config:  # contrastive towers: trained at their full (short) length
        return {"max_text_length": positions, "text_only_max_length": text_only}
    return {"max_text_length": text_only, "text_only_max_length": text_only}  # text-only encoders


def _image_size(config: dict[str, Any]) -> int | None:
    """The vision tower's trained input size (a CLIP-like config nests it in `vision_config`, FLAVA's is
    `image_config`)."""
    for key in ("vision_config", "image_config"):
        if isinstance(config.get(key), dict):
            config = config[key]
            break
    size = config.get("image_size")
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    return size if isinstance(size, int) and size > 0 else None
