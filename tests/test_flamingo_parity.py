"""Parity of `mmbench.models.flamingo` with open-flamingo 2.0.1 (the reference) on tiny random weights.

Every parameter is randomised (LayerNorms too, gates non-zero). How the reference is loaded, and flamingo-tiny
paired with it: tests/flamingo_reference.py. Each check prints its max |difference| (`pytest -rP` shows them).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from flamingo_reference import REF, WHY, OpenClipVisual, randn, record, tiny_pair
from helpers import randomize_
from torch import nn

from mmbench.config import Registry
from mmbench.models import build_model
from mmbench.models.flamingo import last_token_states, tiny_flamingo_tokenizer
from mmbench.models.flamingo_layers import GatedCrossAttentionBlock, PerceiverResampler

pytestmark = pytest.mark.skipif(REF is None, reason=WHY)


# ---- layers --------------------------------------------------------------------------------------------------
def test_default_layer_shapes_match_reference():
    """Our defaults are the reference's (depth 6, 8 heads of 64, 64 latents, FF x4) with the same names."""
    pairs = [
        (PerceiverResampler(32), REF.helpers.PerceiverResampler(dim=32)),
        (GatedCrossAttentionBlock(48, 32), REF.helpers.GatedCrossAttentionBlock(dim=48, dim_visual=32)),
    ]
    for ours, theirs in pairs:
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }


@torch.no_grad()
def test_perceiver_resampler_matches_reference():
    ours = randomize_(PerceiverResampler(24, depth=2, dim_head=16, heads=2, num_latents=8, ff_mult=2), seed=1)
    theirs = REF.helpers.PerceiverResampler(dim=24, depth=2, dim_head=16, heads=2, num_latents=8, ff_mult=2)
    theirs.load_state_dict(ours.state_dict())  # strict: same parameter names
    media = randn(3, 2, 10, 24, seed=0)  # (B, T_img, v, D)
    record("PerceiverResampler", ours(media), theirs(media[:, :, None]))  # reference: (B, T_img, F=1, v, D)


def locations_with_early_text() -> torch.Tensor:
    """(3, 12): images at different positions per row, text before the first image in rows 0 and 2."""
    loc = torch.zeros(3, 12, dtype=torch.bool)
    loc[0, [3, 7]] = True
    loc[1, [0, 5, 9]] = True
    loc[2, [4]] = True
    return loc


@pytest.mark.parametrize("immediate", [True, False])
@torch.no_grad()
def test_gated_cross_attention_block_matches_reference(immediate):
    ours = randomize_(GatedCrossAttentionBlock(32, 24, 16, 2, 2, only_attend_immediate_media=immediate), seed=2)
    theirs = REF.helpers.GatedCrossAttentionBlock(
        dim=32, dim_visual=24, dim_head=16, heads=2, ff_mult=2, only_attend_immediate_media=immediate
    )
    theirs.load_state_dict(ours.state_dict())
    x, media, loc = randn(3, 12, 32, seed=0), randn(3, 3, 4, 24, seed=1), locations_with_early_text()
    out, ref = ours(x, media, loc), theirs(x, media, media_locations=loc)
    seen = loc.cumsum(-1) > 0  # tokens at or after their row's first image
    record(f"GatedCrossAttentionBlock(immediate={immediate})", out[seen], ref[seen])
    # Before the first image: no cross-attention, only the gated feed-forward, in both modes.
    ff_only = x + ours.ff(x) * ours.ff_gate.tanh()
    torch.testing.assert_close(out[~seen], ff_only[~seen], atol=0, rtol=0)
    if immediate:
        record("GatedCrossAttentionBlock(immediate=True), text before the first image", out[~seen], ref[~seen])
    else:  # the reference's known difference: fully masked scores become a uniform average over all images
        assert (out[~seen] - ref[~seen]).abs().max() > 1e-3


# ---- full model ----------------------------------------------------------------------------------------------
def vision_tower_at(vision: nn.Module, size: int) -> nn.Module:
    """A copy of an HF CLIP vision tower built for `size`-px images, its position table HF's interpolation of the
    trained one (`interpolate_pos_encoding`, what the reference's tower would be given for larger images)."""
    config = type(vision.config)(**{**vision.config.to_dict(), "image_size": size})
    tower = type(vision)(config).eval()
    state = dict(vision.state_dict())
    key = next(k for k in state if k.endswith("position_embedding.weight"))
    embeddings = vision.get_submodule(key.removesuffix(".position_embedding.weight"))
    grid = torch.zeros(1, 1 + (size // config.patch_size) ** 2, config.hidden_size)  # only its shape is read
    state[key] = embeddings.interpolate_pos_encoding(grid, size, size)[0]
    tower.load_state_dict(state)
    return tower


# Several images per sample at different positions; with immediate=False every row starts with an image (where
# the reference itself departs from Flamingo, see the block test above).
PROMPTS = {
    True: [
        "a red circle <image> two blue squares<|endofchunk|><image> a star",
        "<image> the cat is left of<|endofchunk|><image> the dog",
        "three green triangles on the <image> right",
    ],
    False: [
        "<image> a red circle<|endofchunk|><image> two blue squares",
        "<image> the cat is left of the big<|endofchunk|><image> dog",
        "<image> three green triangles on the right",
    ],
}


@pytest.mark.parametrize("immediate", [True, False])
@torch.no_grad()
def test_full_model_logits_match_reference(immediate):
    ours, theirs = tiny_pair(immediate)
    toks = ours.tokenize(PROMPTS[immediate])
    ids, mask = toks["input_ids"], toks["attention_mask"]
    assert (mask == 0).any() and ((ids == ours.model.media_token_id).sum(1) == torch.tensor([2, 2, 1])).all()
    px = randn(3, 2, 3, 32, 32, seed=0)  # (B, T_img, C, H, W)
    logits = ours.model(ids, mask, px)
    ref = theirs(vision_x=px[:, :, None], lang_x=ids, attention_mask=mask).logits
    record(f"Flamingo logits (immediate={immediate})", logits, ref)


OTHER_LMS = {
    "llama": ("llama", "model.layers", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                            num_attention_heads=4, num_key_value_heads=2)),
    "gpt2": ("gpt2", "transformer.h", dict(n_embd=32, n_inner=64, n_layer=4, n_head=4, n_positions=128)),
}  # fmt: skip


@pytest.mark.parametrize("lm", sorted(OTHER_LMS))
@torch.no_grad()
def test_logits_in_llama_and_gpt2_style_lms_match_reference(lm):
    """Gated blocks inserted into other decoder-layer layouts (by path, through a pre-hook) give the reference's
    logits, not just the right shapes."""
    ours, theirs = tiny_pair(True, OTHER_LMS[lm])
    toks = ours.tokenize(PROMPTS[True])
    ids, mask = toks["input_ids"], toks["attention_mask"]
    assert (mask == 0).any() and len(ours.model.gated_cross_attn_layers) == 2
    px = randn(3, 2, 3, 32, 32, seed=4)
    logits = ours.model(ids, mask, px)
    ref = theirs(vision_x=px[:, :, None], lang_x=ids, attention_mask=mask).logits
    record(f"Flamingo logits in a {lm} LM", logits, ref)


@pytest.mark.parametrize("size", [64, 48])
@torch.no_grad()
def test_logits_at_larger_image_sizes_match_reference(size):
    """VQA-style larger images: our tower interpolates its positions on the fly; the reference gets a tower built
    at that size whose table HF interpolated once."""
    ours, theirs = tiny_pair(True)
    theirs.vision_encoder = OpenClipVisual(vision_tower_at(ours.model.vision_encoder, size))
    toks = ours.tokenize(PROMPTS[True])
    px = randn(3, 2, 3, size, size, seed=5)
    logits = ours.model(toks["input_ids"], toks["attention_mask"], px)
    ref = theirs(vision_x=px[:, :, None], lang_x=toks["input_ids"], attention_mask=toks["attention_mask"]).logits
    record(f"Flamingo logits at {size} px", logits, ref)


@torch.no_grad()
def test_wrapper_features_match_reference():
    """TEXT and FUSION features, read through the LM head, against the reference's logits at the last token."""
    ours, theirs = tiny_pair(True)
    toks = ours.tokenize(["a red circle", "two blue squares on the left of a star", "the cat"])
    ids, mask = toks["input_ids"], toks["attention_mask"]
    px = randn(3, 3, 32, 32, seed=1)
    head = ours.model.lang_encoder.get_output_embeddings()
    # FUSION: "<image>" + text. TEXT: the text alone, which the reference runs as text before any image.
    media = torch.full_like(ids[:, :1], ours.model.media_token_id)
    with_media = torch.cat([media, ids], 1), torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
    ref_pair = theirs(vision_x=px[:, None, None], lang_x=with_media[0], attention_mask=with_media[1]).logits
    record("pair_features", head(ours.pair_features(px, **toks)), last_token_states(ref_pair, with_media[1]))
    ref_text = theirs(vision_x=px[:, None, None], lang_x=ids, attention_mask=mask).logits
    record("text_features", head(ours.text_features(**toks)), last_token_states(ref_text, mask))


# ---- a checkpoint the reference wrote ------------------------------------------------------------------------
def trainable_state(model: nn.Module, aliases: str) -> dict[str, torch.Tensor]:
    """The reference's state dict reduced as OpenFlamingo training saved it: trainable tensors plus embeddings,
    no vision tower. "all": every alias (open-flamingo 1.x); "decoder-layer": only the `...gated_cross_attn_layer`
    copies (2.x `filter_state_dict_to_trainable`)."""
    trainable = {p.data_ptr() for p in model.parameters() if p.requires_grad}
    state = {
        k: v.clone()
        for k, v in model.state_dict().items()
        if not k.startswith("vision_encoder.") and (v.data_ptr() in trainable or "embed" in k or "lm_head" in k)
    }
    if aliases == "decoder-layer":
        state = {k: v for k, v in state.items() if ".gated_cross_attn_layers." not in k and "old_decoder" not in k}
    return state


def write_backbones(root: Path) -> dict[str, Any]:
    """A tiny RedPajama-like LM (GPT-NeoX, its tokenizer without a pad token in its config) and CLIP tower, saved
    as HF directories; returns the preset's arch block."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, GPTNeoXConfig, GPTNeoXForCausalLM

    tok = tiny_flamingo_tokenizer(flamingo_tokens=False)
    tok.add_tokens(["<|padding|>"], special_tokens=True)  # in GPT-NeoX-20B's vocabulary, as in RedPajama's
    tok.save_pretrained(root / "lm")
    config = json.loads((root / "lm" / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)  # as RedPajama's: transformers 5 then defaults the pad token to <|padding|>
    (root / "lm" / "tokenizer_config.json").write_text(json.dumps(config))
    lm_cfg = GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4
    )
    randomize_(GPTNeoXForCausalLM(lm_cfg), seed=11).save_pretrained(root / "lm")
    vision_cfg = CLIPVisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    randomize_(CLIPVisionModel(vision_cfg), seed=12).save_pretrained(root / "vision")
    return {
        "vision_encoder": str(root / "vision"),
        "lang_encoder": str(root / "lm"),
        "decoder_layers": "gpt_neox.layers",
        "cross_attn_every_n_layers": 2,
        "pad_token": "<PAD>",
        "perceiver": {"depth": 2, "heads": 2, "dim_head": 16, "num_latents": 8, "ff_mult": 2},
        "cross_attn": {"heads": 2, "dim_head": 16, "ff_mult": 2},
    }


def reference_as_trained(arch: dict[str, Any]) -> tuple[nn.Module, Any]:
    """The reference built as its factory.py does (tokens added, embeddings resized, backbones frozen), with the
    trainable parts and embeddings then randomised as if trained."""
    from transformers import AutoTokenizer, CLIPVisionModel, GPTNeoXForCausalLM

    tok = AutoTokenizer.from_pretrained(arch["lang_encoder"])
    tok.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
    tok.add_special_tokens({"pad_token": "<PAD>"})  # factory.py's branch for a tokenizer with no pad token
    lm = GPTNeoXForCausalLM.from_pretrained(arch["lang_encoder"])
    REF.utils.extend_instance(lm, REF.flamingo_lm.FlamingoLMMixin)
    lm.set_decoder_layers_attr_name(arch["decoder_layers"])
    lm.resize_token_embeddings(len(tok))
    vision = CLIPVisionModel.from_pretrained(arch["vision_encoder"])
    model = REF.flamingo.Flamingo(
        SimpleNamespace(visual=OpenClipVisual(vision)),
        lm,
        eoc_token_id=tok.encode("<|endofchunk|>")[-1],
        media_token_id=tok.encode("<image>")[-1],
        vis_dim=24,
        cross_attn_every_n_layers=arch["cross_attn_every_n_layers"],
    )
    model.perceiver = REF.helpers.PerceiverResampler(dim=24, **arch["perceiver"])
    lm.gated_cross_attn_layers = nn.ModuleList(
        REF.helpers.GatedCrossAttentionBlock(dim=32, dim_visual=24, **arch["cross_attn"]) if i % 2 else None
        for i in range(4)
    )
    lm.init_flamingo_layers(False)
    model.requires_grad_(False)  # factory.py: only the resampler, the blocks and the input embeddings train
    model.perceiver.requires_grad_(True)
    lm.gated_cross_attn_layers.requires_grad_(True)
    lm.get_input_embeddings().requires_grad_(True)
    trained = [model.perceiver, lm.gated_cross_attn_layers, lm.get_input_embeddings(), lm.get_output_embeddings()]
    for i, part in enumerate(trained):
        randomize_(part, seed=20 + i)
    return model.eval(), tok


@pytest.mark.parametrize("aliases", ["all", "decoder-layer"])
@torch.no_grad()
def test_checkpoint_written_by_the_reference_loads_through_a_preset(tmp_path, aliases):
    arch = write_backbones(tmp_path)
    theirs, tok = reference_as_trained(arch)
    torch.save(trainable_state(theirs, aliases), tmp_path / "checkpoint.pt")
    preset = {
        "wrapper": "mmbench.models.flamingo:FlamingoWrapper",
        "checkpoint": str(tmp_path / "checkpoint.pt"),
        "tokenizer": arch["lang_encoder"],
        "preprocess": {"image_size": 32, "resize": 32},
        "arch": arch,
    }
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "of-local.yaml").write_text(yaml.safe_dump(preset))
    ours = build_model(Registry(roots=[tmp_path]).model("of-local"))
    assert ours.checkpoint_report.unexpected == []
    assert len(ours.tokenizer) == len(tok) and ours.model.media_token_id == tok.encode("<image>")[-1]
    toks = ours.tokenize(PROMPTS[True])
    px = randn(3, 2, 3, 32, 32, seed=2)
    logits = ours.model(toks["input_ids"], toks["attention_mask"], px)
    ref = theirs(vision_x=px[:, :, None], lang_x=toks["input_ids"], attention_mask=toks["attention_mask"]).logits
    record(f"checkpoint ({aliases} aliases) logits", logits, ref)
