"""The open-flamingo 2.0.1 reference, loaded for parity tests (not a test module): its source files, a vision tower
shaped like the open_clip one it was trained with, and flamingo-tiny paired with the reference at equal weights.

The reference's modules are loaded straight from its source files: its package `__init__` imports open_clip, which
it needs only to build vision towers, so the reference Flamingo gets our HF `CLIPVisionModel` wrapped to return
what open_clip's `visual(x)` returned with `output_tokens=True`: (pooled, patch tokens without CLS, before
`ln_post`). transformers 5 adaptations live here, never in src.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from helpers import randomize_
from torch import nn

from mmbench.config import Registry
from mmbench.models import build_model
from mmbench.models.base import parse_arch
from mmbench.models.flamingo import Flamingo, FlamingoArch, FlamingoWrapper

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5


def load_reference() -> tuple[SimpleNamespace | None, str]:
    """open_flamingo/src/{helpers,utils,flamingo_lm,flamingo}.py under a private package name (their relative
    imports resolve inside it), without running `open_flamingo/__init__.py`."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        src = Path(distribution("open-flamingo").locate_file("open_flamingo/src"))
    except PackageNotFoundError:
        return None, "open-flamingo is not installed (pip install --no-deps -r requirements/parity.txt)"
    name = "_openflamingo_reference"
    try:
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(
                name, src / "__init__.py", submodule_search_locations=[str(src)]
            )
            package = importlib.util.module_from_spec(spec)
            sys.modules[name] = package
            spec.loader.exec_module(package)
        parts = {m: importlib.import_module(f"{name}.{m}") for m in ("helpers", "utils", "flamingo_lm", "flamingo")}
    except (ImportError, FileNotFoundError) as e:
        sys.modules.pop(name, None)
        return None, f"open_flamingo's source files are not importable ({e})"
    return SimpleNamespace(**parts), ""


REF, WHY = load_reference()


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def record(what: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    diff = (ours - theirs).abs().max().item()
    print(f"parity {what}: max |diff| = {diff:.3g}")
    assert diff <= TOL, f"{what}: max |diff| {diff} > {TOL}"
    return diff


class OpenClipVisual(nn.Module):
    """What open_clip's `VisionTransformer` returned with `output_tokens=True` in the 2023 releases OpenFlamingo was
    trained with: (pooled, tokens), tokens = the last block's output without CLS, before ln_post."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.hf(pixel_values=pixel_values)
        return out.pooler_output, out.last_hidden_state[:, 1:]


def pass_positional_arguments(lm: nn.Module) -> None:
    """transformers 5's GPT2Model calls each block as `block(hidden_states, cache, mask, encoder_states, ...)`;
    the reference's `FlamingoLayer.forward(lang_x, attention_mask=None, **kwargs)` was written for transformers 4,
    whose GPT-2 passed those by keyword. Name them by the block's own signature, then run the reference's forward
    unchanged."""
    import inspect

    class KeywordFlamingoLayer(REF.flamingo_lm.FlamingoLayer):
        def forward(self, lang_x, *args, **kwargs):
            names = list(inspect.signature(self.decoder_layer.forward).parameters)[1 : 1 + len(args)]
            return super().forward(lang_x, **dict(zip(names, args)), **kwargs)

    for layer in lm._get_decoder_layers():
        layer.__class__ = KeywordFlamingoLayer


def reference_flamingo(ours: Flamingo, arch: FlamingoArch, eoc_token_id: int) -> nn.Module:
    """The reference `Flamingo` around copies of our LM and vision tower, with our resampler and block weights."""
    lm = type(ours.lang_encoder)(ours.lang_encoder.config)
    lm.load_state_dict(ours.lang_encoder.state_dict())
    vision = type(ours.vision_encoder)(ours.vision_encoder.config)
    vision.load_state_dict(ours.vision_encoder.state_dict())
    REF.utils.extend_instance(lm, REF.flamingo_lm.FlamingoLMMixin)
    lm.set_decoder_layers_attr_name(arch.decoder_layers)
    model = REF.flamingo.Flamingo(
        SimpleNamespace(visual=OpenClipVisual(vision)),
        lm,
        eoc_token_id=eoc_token_id,
        media_token_id=ours.media_token_id,
        vis_dim=ours.vis_dim,
        cross_attn_every_n_layers=arch.cross_attn_every_n_layers,
    ).eval()
    # The reference hard-codes its resampler and block sizes; rebuild them, with its own classes, at the preset's.
    model.perceiver = REF.helpers.PerceiverResampler(dim=ours.vis_dim, **dataclasses.asdict(arch.perceiver))
    model.perceiver.load_state_dict(ours.perceiver.state_dict())
    # Where blocks go is the reference's own decision (its init_flamingo); ours must have the same places.
    places = [str(i) for i, block in enumerate(lm.gated_cross_attn_layers) if block is not None]
    assert places == list(ours.gated_cross_attn_layers)
    blocks = [None] * len(lm.gated_cross_attn_layers)
    for i in places:
        blocks[int(i)] = REF.helpers.GatedCrossAttentionBlock(
            dim=ours.lang_dim, dim_visual=ours.vis_dim, **dataclasses.asdict(arch.cross_attn)
        )
        blocks[int(i)].load_state_dict(ours.gated_cross_attn_layers[i].state_dict())
    lm.gated_cross_attn_layers = nn.ModuleList(blocks)
    lm.init_flamingo_layers(False)
    return model.eval()


def tiny_flamingo(
    immediate: bool = True, lm: tuple[str, str, dict[str, Any]] | None = None, seed: int = 3, std: float = 0.5
) -> FlamingoWrapper:
    """flamingo-tiny (or around another LM: model type, decoder-layer path, config), every parameter randomised
    (`helpers.randomize_` with `seed` and `std`), in eval mode."""
    cfg = Registry(roots=[REPO]).model(
        "flamingo-tiny", {"arch": {"cross_attn": {"only_attend_immediate_media": immediate}}}
    )
    if lm is not None:  # the lm block replaced, not merged: GPT-2 reads none of GPT-NeoX's keys
        arch = {**cfg.arch, "lm_model_type": lm[0], "decoder_layers": lm[1], "lm": lm[2]}
        cfg = dataclasses.replace(cfg, arch=arch)
    return randomize_(build_model(cfg), seed=seed, std=std).eval()


def tiny_pair(
    immediate: bool, lm: tuple[str, str, dict[str, Any]] | None = None, seed: int = 3, std: float = 0.5
) -> tuple[FlamingoWrapper, nn.Module]:
    """`tiny_flamingo` and the reference at equal weights."""
    ours = tiny_flamingo(immediate, lm, seed, std)
    eoc = ours.tokenizer.convert_tokens_to_ids("<|endofchunk|>")
    theirs = reference_flamingo(ours.model, parse_arch(ours.cfg, FlamingoArch), eoc)
    if lm is not None and lm[0] == "gpt2":
        pass_positional_arguments(theirs.lang_encoder)
    return ours, theirs
