"""Loading OpenFlamingo `checkpoint.pt` files (hub repo, directory or file) into `mmbench.models.flamingo.Flamingo`.

An OpenFlamingo checkpoint is a `Flamingo.state_dict()` of open-flamingo 2.0.1, loaded there with `strict=False`
because it holds only what was trained: `perceiver.*`, the gated blocks and the LM's token embeddings (whose rows
for `<|endofchunk|>`, `<image>` and `<PAD>` were learned). The reference registers every gated block twice, so its
state dicts hold each under two keys, and older checkpoints keep both:

    lang_encoder.gated_cross_attn_layers.{i}.*                  -> gated_cross_attn_layers.{i}.*
    lang_encoder.<decoder_layers>.{i}.gated_cross_attn_layer.*  -> gated_cross_attn_layers.{i}.*
    lang_encoder.<decoder_layers>.{i}.decoder_layer.*           -> lang_encoder.<decoder_layers>.{i}.*
    lang_encoder.old_decoder_blocks.{i}.*                       -> lang_encoder.<decoder_layers>.{i}.*
    lang_encoder.* / perceiver.*                                -> unchanged

The LM's own keys then get the renames transformers applies when it loads that LM's checkpoints: OpenFlamingo wrote
them with transformers 4, and transformers 5 renamed e.g. GPT-NeoX's `embed_out` to `lm_head`. A leading `module.`
(DDP) is dropped. Aliases must agree. Every perceiver and gated-block weight must be present
(a partial Flamingo would be silently wrong); keys that match nothing here (open_clip `vision_encoder.*`, buffers of
older transformers releases) are ignored with a warning and listed in the returned report. Proven on a checkpoint
the reference wrote in tests/test_flamingo_parity.py, and on hand-made layouts and broken files in
tests/test_flamingo.py.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mmbench.errors import CheckpointError
from mmbench.models.base import hf_loading, is_local_path, require_checkpoint
from mmbench.schema import ModelConfig

if TYPE_CHECKING:
    from mmbench.models.flamingo import Flamingo

TRAINED_PREFIXES = ("perceiver.", "gated_cross_attn_layers.")


@dataclass
class CheckpointReport:
    path: str
    loaded: list[str] = field(default_factory=list)  # our state-dict keys filled from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys that match nothing in the model


def resolve_checkpoint_file(cfg: ModelConfig, filename: str) -> str:
    """`cfg.checkpoint` as a local file: a file path, a directory holding `filename`, or a hub repo id."""
    if is_local_path(cfg.checkpoint or ""):
        path = Path(require_checkpoint(cfg))
        if path.is_dir():
            path = path / filename
            if not path.is_file():
                raise CheckpointError(f"model {cfg.name!r}: checkpoint directory has no {filename}: {path}")
        return str(path)
    from huggingface_hub import hf_hub_download

    with hf_loading(cfg, f"OpenFlamingo {filename} of"):
        return hf_hub_download(cfg.checkpoint, filename, revision=cfg.revision)


def lm_key_renamer(lang_encoder: nn.Module) -> Callable[[str], str]:
    """The key renames transformers applies when loading this LM's own checkpoints (keys relative to the LM)."""
    try:  # not public API: without it, keys are taken as written
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:
        return lambda key: key
    renamings = [t for t in get_model_conversion_mapping(lang_encoder) if isinstance(t, WeightRenaming)]
    return lambda key: rename_source_key(key, renamings, [])[0]


def openflamingo_key(key: str, decoder_layers: str, rename_lm: Callable[[str], str] = str) -> str:
    """An OpenFlamingo state-dict key -> the key of the same tensor in our `Flamingo` (see the module docstring)."""
    key = key.removeprefix("module.")
    layers = re.escape(f"lang_encoder.{decoder_layers}.")
    for pattern, target in (
        (r"lang_encoder\.gated_cross_attn_layers\.(\d+)\.(.+)", r"gated_cross_attn_layers.\1.\2"),
        (layers + r"(\d+)\.gated_cross_attn_layer\.(.+)", r"gated_cross_attn_layers.\1.\2"),
        (layers + r"(\d+)\.decoder_layer\.(.+)", rf"lang_encoder.{decoder_layers}.\1.\2"),
        (r"lang_encoder\.old_decoder_blocks\.(\d+)\.(.+)", rf"lang_encoder.{decoder_layers}.\1.\2"),
    ):
        match = re.fullmatch(pattern, key)
        if match:
            key = match.expand(target)
            break
    if key.startswith("lang_encoder."):
        return "lang_encoder." + rename_lm(key.removeprefix("lang_encoder."))
    return key


def read_state_dict(path: str, name: str) -> dict[str, Tensor]:
    """`torch.load(weights_only=True)`, memory-mapped where the file format allows (the 4B checkpoint is 5 GB)."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"model {name!r}: cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):  # OpenFlamingo training checkpoints
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"model {name!r}: checkpoint {path} is not a state dict of tensors")
    return obj


def load_openflamingo_checkpoint(model: Flamingo, path: str, name: str) -> CheckpointReport:
    """Load an OpenFlamingo-layout checkpoint into `model` in place; wrong keys or shapes raise `CheckpointError`."""
    state = read_state_dict(path, name)
    target = model.state_dict()
    report = CheckpointReport(path=path)
    mapped: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    rename_lm = lm_key_renamer(model.lang_encoder)
    for key in sorted(state):  # sorted: some transformers renames are activated by the first key they see
        value = state[key]
        ours = openflamingo_key(key, model.decoder_layers, rename_lm)
        if ours not in target:
            report.unexpected.append(key)
            continue
        if value.shape != target[ours].shape:
            hint = " (is the tokenizer, with its added tokens, the checkpoint's?)" if "embed" in key else ""
            raise CheckpointError(
                f"model {name!r}: checkpoint {path}: key {key!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target[ours].shape)}{hint}"
            )
        if ours in mapped and not torch.equal(mapped[ours], value):
            raise CheckpointError(
                f"model {name!r}: checkpoint {path}: aliased keys {source[ours]!r} and {key!r} hold different values"
            )
        mapped[ours], source[ours] = value, key
    trained = [k for k in target if k.startswith(TRAINED_PREFIXES)]
    missing = [k for k in trained if k not in mapped]
    if missing:
        raise CheckpointError(
            f"model {name!r}: checkpoint {path} does not fit this Flamingo: {len(missing)} of {len(trained)} "
            f"perceiver/gated-block weights missing ({_some(missing)}); keys matching nothing: "
            f"{_some(report.unexpected) or 'none'}. Gated blocks are read from "
            f"'lang_encoder.gated_cross_attn_layers.N.*' or "
            f"'lang_encoder.{model.decoder_layers}.N.gated_cross_attn_layer.*'"
        )
    model.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    if report.unexpected:
        warnings.warn(
            f"model {name!r}: ignored {len(report.unexpected)} checkpoint keys that match nothing in the model "
            f"({_some(report.unexpected)})",
            stacklevel=2,
        )
    return report


def _some(keys: list[str], n: int = 5) -> str:
    more = f", ... {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more
