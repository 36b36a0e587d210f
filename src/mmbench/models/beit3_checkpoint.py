"""Released BEiT-3 files: where they come from (a local path, or a release URL downloaded once into the cache), how
they are read (`torch.load(weights_only=True)`), and how their keys map onto `Beit3Wrapper`.

The unilm release (`microsoft/unilm/beit3`, `utils.load_model_and_may_interpolate`) stores `{"model": state_dict}`
(DeepSpeed saves use `"module"`), with backbone keys `beit3.<torchscale key>` and task heads beside them:
`vision_head`/`language_head` (retrieval and ITC), `pooler` (VQA), `fc_norm` (ImageNet), plus heads this wrapper
does not use (`head.*`, `mlm_head.*`, `logit_scale`, pre-training heads), which are reported as ignored. A vision
position table trained at another image size is interpolated bicubically on the patch grid.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from mmbench.errors import CheckpointError
from mmbench.models.beit3_layers import VISION_EXTRA_POSITIONS, interpolate_vision_positions
from mmbench.paths import checkpoint_download_dir

log = logging.getLogger(__name__)

WRAPPING_KEYS = ("model", "module")  # unilm's `--model_key model|module`
BACKBONE_PREFIX = "beit3."
HEADS = ("vision_head", "language_head", "pooler", "fc_norm")  # the heads Beit3Wrapper owns
POSITION_KEY = "beit3.encoder.embed_positions.A.weight"


@dataclass
class LoadReport:
    path: str
    backbone_tensors: int = 0
    heads_loaded: list[str] = field(default_factory=list)
    heads_fresh: list[str] = field(default_factory=list)  # not in the checkpoint: initialised as unilm does
    ignored: list[str] = field(default_factory=list)  # checkpoint keys this wrapper does not use
    interpolated: tuple[int, int] | None = None  # vision patch grid side: (checkpoint, model)


def is_url(source: str) -> bool:
    return "://" in source


def offline() -> bool:
    return any(os.environ.get(v, "").lower() not in ("", "0", "false") for v in ("MMBENCH_OFFLINE", "HF_HUB_OFFLINE"))


def resolve_file(source: str, model: str, what: str, key: str) -> Path:
    """A local file, or a release URL downloaded once into `cache_dir()/checkpoints`. `key` names the preset
    field (for the error's `--set` hint)."""
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise CheckpointError(f"model {model!r}: {what} file {path} does not exist")
        return path
    target = checkpoint_download_dir() / Path(urlparse(source).path).name
    if target.is_file():
        return target
    how = (
        f"download it on a machine with network and place it at {target}, or point the preset at a local copy "
        f"with `--set model.{key}=/path/to/file`"
    )
    remote = urlparse(source).scheme != "file"
    if remote and offline():
        raise CheckpointError(
            f"model {model!r}: {what} {source} is not in the cache and offline mode is on "
            f"(HF_HUB_OFFLINE/MMBENCH_OFFLINE); {how}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s %s to %s", what, source, target)
    try:
        # Writes a temporary file in the target folder and renames it: no half file is ever left at `target`.
        torch.hub.download_url_to_file(source, str(target), progress=False)
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"model {model!r}: cannot download {what} {source} ({reason}); {how}") from None
    return target


def read_state_dict(path: Path, model: str) -> dict[str, Tensor]:
    """The checkpoint's tensors, unwrapped from `model`/`module`; bare torchscale keys get the `beit3.` prefix."""
    try:
        # unilm's training script saves its argparse.Namespace beside the weights; allow exactly that class.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file (corrupt, not a pickle, unsafe globals) is one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"model {model!r}: cannot read checkpoint {path}: {reason}") from None
    for key in WRAPPING_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"model {model!r}: checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not any(k.startswith(BACKBONE_PREFIX) for k in tensors):
        bare = ("encoder.", "vision_embed.", "text_embed.")  # a torchscale `BEiT3` state dict of its own
        tensors = {(BACKBONE_PREFIX + k if k.startswith(bare) else k): v for k, v in tensors.items()}
    return tensors


def load_into(wrapper: nn.Module, path: Path, model: str) -> LoadReport:
    """Load a released-layout checkpoint into `wrapper` (backbone under `beit3`, heads at the top level).

    The backbone must match key for key (the error says how); heads are all-or-nothing per head."""
    sd = read_state_dict(path, model)
    own = wrapper.state_dict()
    where = f"model {model!r}: checkpoint {path}"
    ckpt_backbone = [k for k in sd if k.startswith(BACKBONE_PREFIX)]
    own_backbone = [k for k in own if k.startswith(BACKBONE_PREFIX)]
    if not set(ckpt_backbone) & set(own_backbone):
        found = ", ".join(repr(k) for k in list(sd)[:3]) or "no tensors"
        raise CheckpointError(
            f"{where} holds no BEiT-3 weights (expected keys like 'beit3.encoder.layers.0.ffn.A.fc1.weight', "
            f"optionally under 'model'; found {found})"
        )
    report = LoadReport(path=str(path))
    if POSITION_KEY in sd and POSITION_KEY in own and sd[POSITION_KEY].shape != own[POSITION_KEY].shape:
        report.interpolated = _interpolate_positions(sd, own[POSITION_KEY].shape, where)

    missing = [k for k in own_backbone if k not in sd]
    unexpected = [k for k in ckpt_backbone if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{where} does not fit the preset's arch: {_key_mismatch(missing, unexpected)}")
    for k in sd.keys() & own.keys():
        if sd[k].shape != own[k].shape:
            raise CheckpointError(
                f"{where}: {k} has shape {tuple(sd[k].shape)}, the preset's arch expects {tuple(own[k].shape)}"
            )

    chosen = {k: sd[k] for k in ckpt_backbone}
    for head in HEADS:
        keys = [k for k in own if k.startswith(head + ".")]
        present = [k for k in keys if k in sd]
        if present and len(present) != len(keys):
            raise CheckpointError(f"{where}: head {head!r} is incomplete (has {present}, needs {keys})")
        (report.heads_loaded if present else report.heads_fresh).append(head)
        chosen.update({k: sd[k] for k in present})
    report.ignored = sorted(k for k in sd if k not in own)
    report.backbone_tensors = len(ckpt_backbone)

    result = wrapper.load_state_dict(chosen, strict=False)
    assert not result.unexpected_keys and all(k.split(".")[0] in report.heads_fresh for k in result.missing_keys)
    log.info(
        "loaded %s: %d backbone tensors, heads %s, fresh heads %s, ignored %s%s",
        path,
        report.backbone_tensors,
        report.heads_loaded,
        report.heads_fresh,
        report.ignored,
        f", positions interpolated {report.interpolated}" if report.interpolated else "",
    )
    return report


def _interpolate_positions(sd: dict[str, Tensor], shape: torch.Size, where: str) -> tuple[int, int]:
    table = sd[POSITION_KEY]
    if table.ndim != 2 or table.size(1) != shape[1]:
        raise CheckpointError(f"{where}: {POSITION_KEY} has shape {tuple(table.shape)}, expected (*, {shape[1]})")
    new_side = math.isqrt(shape[0] - VISION_EXTRA_POSITIONS)
    try:
        sd[POSITION_KEY] = interpolate_vision_positions(table, (new_side, new_side))
    except ValueError as e:
        raise CheckpointError(f"{where}: {POSITION_KEY}: {e}") from None
    return math.isqrt(table.size(0) - VISION_EXTRA_POSITIONS), new_side


def _key_mismatch(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} backbone keys missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    norm = "beit3.encoder.layer_norm.A.weight"
    if norm in missing:
        parts.append("it was saved without the final LayerNorm: set arch.normalize_output: false")
    elif norm in unexpected:
        parts.append("it has a final LayerNorm: set arch.normalize_output: true")
    else:
        parts.append("check arch.encoder_layers / encoder_embed_dim against the checkpoint")
    return "; ".join(parts)
