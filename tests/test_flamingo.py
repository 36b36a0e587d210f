"""Flamingo wrapper (`mmbench.models.flamingo`): the wrapper contract on `flamingo-tiny`, fine-tuning defaults,
masking invariants that need no reference, insertion into other causal LMs, and OpenFlamingo-layout checkpoints.
Equality with open-flamingo itself is in test_flamingo_parity.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import randomize_

from mmbench.config import Registry
from mmbench.errors import CapabilityError, CheckpointError, ConfigError
from mmbench.models import Capability, build_model
from mmbench.models.flamingo import FlamingoWrapper, last_token_states
from mmbench.models.flamingo_checkpoint import lm_key_renamer, openflamingo_key
from mmbench.models.flamingo_layers import GatedCrossAttentionBlock

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red circle", "two blue squares on the left of a star", "the cat"]


def tiny(overrides: dict[str, Any] | None = None, seed: int | None = 0) -> FlamingoWrapper:
    """`flamingo-tiny` with every parameter randomised (gates non-zero), unless `seed` is None."""
    model = build_model(Registry(roots=[REPO]).model("flamingo-tiny", overrides))
    return randomize_(model, seed=seed) if seed is not None else model


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def images(n: int, seed: int, per_sample: int | None = None) -> torch.Tensor:
    return randn(n, 3, 32, 32, seed=seed) if per_sample is None else randn(n, per_sample, 3, 32, 32, seed=seed)


def encode(model: FlamingoWrapper, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    toks = model.tokenize(texts)
    return toks["input_ids"], toks["attention_mask"]


# ---- contract -------------------------------------------------------------------------------------------------
def test_tiny_preset_has_the_declared_capabilities():
    model = tiny(seed=None)  # build time: benchmarks/build.py (no timed tests)
    assert model.capabilities == Capability.IMAGE | Capability.TEXT | Capability.FUSION | Capability.GENERATE
    assert Capability.CONTRASTIVE not in model.capabilities
    assert model.feature_dims == {"image": 24, "text": 32, "pair": 32}
    assert sorted(model.model.gated_cross_attn_layers) == ["1", "3"]  # before layers i with (i+1) % 2 == 0
    toks = model.tokenize(CAPTIONS)
    with pytest.raises(CapabilityError):
        model.image_embeddings(images(3, 0))
    with pytest.raises(CapabilityError):
        model.text_embeddings(**toks)


@torch.no_grad()
def test_feature_shapes_and_padding():
    model = tiny().eval()
    toks = model.tokenize(CAPTIONS)
    assert toks["attention_mask"].sum(1).unique().numel() == 3  # three lengths: a padded batch
    px = images(3, 1)
    assert model.image_features(px).shape == (3, 24)
    text, pair = model.text_features(**toks), model.pair_features(px, **toks)
    assert text.shape == pair.shape == (3, 32)
    torch.testing.assert_close(model.image_features(px), model.model.vision_encoder(pixel_values=px).pooler_output)
    for i, caption in enumerate(CAPTIONS):  # the padded batch pools each row's own last token
        alone = model.tokenize([caption])
        torch.testing.assert_close(model.text_features(**alone)[0], text[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.pair_features(px[i : i + 1], **alone)[0], pair[i], atol=1e-5, rtol=0)
    assert (pair - text).abs().amax() > 1e-3  # the image reaches the fused features...
    assert (model.pair_features(images(3, 2), **toks) - pair).abs().amax() > 1e-3  # ...and which image matters


@torch.no_grad()
def test_pair_features_put_the_media_token_first_unless_the_text_places_it():
    model = tiny().eval()
    px = images(2, 3)
    ids, mask = encode(model, ["a red circle", "the cat"])
    media = torch.full_like(ids[:, :1], model.model.media_token_id)
    hidden = model.model.hidden_states(
        torch.cat([media, ids], 1), torch.cat([torch.ones_like(mask[:, :1]), mask], 1), px
    )
    expected = hidden[torch.arange(2), mask.sum(1)]  # last real token, one position later
    torch.testing.assert_close(model.pair_features(px, input_ids=ids, attention_mask=mask), expected)
    placed = model.tokenize(["a red <image> circle", "<image> the cat"])  # as written: no extra token
    hidden = model.model.hidden_states(placed["input_ids"], placed["attention_mask"], px)
    torch.testing.assert_close(model.pair_features(px, **placed), last_token_states(hidden, placed["attention_mask"]))


def test_tiny_tokenizer_has_the_flamingo_tokens_in_openflamingo_order():
    tok = tiny(seed=None).tokenizer
    base = len(tok) - 3
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endofchunk|>", "<image>", "<PAD>")] == [base, base + 1, base + 2]
    assert tok.pad_token == "<PAD>" and tok.padding_side == "right"
    assert tok.convert_ids_to_tokens(tok("<image>a red circle<|endofchunk|>")["input_ids"]) == [
        "<image>",
        "a",
        "Ġred",
        "Ġcircle",
        "<|endofchunk|>",
    ]


# ---- fine-tuning defaults --------------------------------------------------------------------------------------
def test_finetune_defaults_freeze_the_backbones_but_not_the_flamingo_layers():
    model = tiny()
    frozen = set(model.freeze_for_finetuning())
    names = {n for n, _ in model.named_parameters()}
    backbone = {n for n in names if n.startswith(("model.vision_encoder.", "model.lang_encoder."))}
    assert frozen == backbone and backbone
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == names - backbone
    assert {n.split(".")[1] for n in trainable} == {"perceiver", "gated_cross_attn_layers"}
    assert "model.gated_cross_attn_layers.1.attn_gate" in trainable
    model.pair_features(images(3, 0), **model.tokenize(CAPTIONS)).square().sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if n in backbone)


def test_gated_blocks_train_the_same_under_gradient_checkpointing():
    """The blocks run in forward pre-hooks: they must not be skipped when the LM replays a layer in backward."""
    grads = []
    for checkpointing in (False, True):
        model = tiny().train()
        model.freeze_for_finetuning()
        if checkpointing:
            model.model.lang_encoder.activation_checkpointing_enable({"use_reentrant": False})
            assert all(layer.gradient_checkpointing for layer in model.model.lang_encoder.gpt_neox.layers)
        model.pair_features(images(3, 0), **model.tokenize(CAPTIONS)).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.model.gated_cross_attn_layers.parameters()]))
    torch.testing.assert_close(grads[1], grads[0])


# ---- masking invariants ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("immediate", [True, False])
@torch.no_grad()
def test_tokens_before_the_first_image_do_not_see_the_images(immediate):
    model = tiny({"arch": {"cross_attn": {"only_attend_immediate_media": immediate}}}).eval().model
    ids, mask = encode(tiny(seed=None), ["two blue squares on the <image> left <image> of a star"])
    first = int((ids[0] == model.media_token_id).nonzero()[0])
    a = model(ids, mask, images(1, 4, per_sample=2))
    b = model(ids, mask, images(1, 5, per_sample=2))
    torch.testing.assert_close(a[:, :first], b[:, :first], atol=0, rtol=0)
    torch.testing.assert_close(a[:, :first], model(ids[:, :first], mask[:, :first]), atol=1e-6, rtol=0)
    assert (a[:, first:] - b[:, first:]).abs().amax() > 1e-3  # after it, they do


@torch.no_grad()
def test_text_attends_only_to_its_latest_image():
    model = tiny().eval().model
    ids, mask = encode(tiny(seed=None), ["a <image> red circle left <image> of the star"])
    second = int((ids[0] == model.media_token_id).nonzero()[1])
    px = images(1, 6, per_sample=2)
    other = px.clone()
    other[:, 1] = images(1, 7)
    a, b = model(ids, mask, px), model(ids, mask, other)
    torch.testing.assert_close(a[:, :second], b[:, :second], atol=0, rtol=0)  # image 2 unseen before its token
    assert (a[:, second:] - b[:, second:]).abs().amax() > 1e-3


@pytest.mark.parametrize("immediate", [True, False])
def test_cross_attention_after_the_second_image_sees_the_first_only_when_asked(immediate):
    """Block level (the LM's self-attention would carry image 1 forward anyway): after the second `<image>`,
    image 1 reaches the cross-attention only with only_attend_immediate_media=False."""
    block = randomize_(GatedCrossAttentionBlock(32, 24, 16, 2, 2, only_attend_immediate_media=immediate), seed=1)
    x, media = randn(1, 8, 32, seed=0), randn(1, 2, 4, 24, seed=1)
    locations = torch.zeros(1, 8, dtype=torch.bool)
    locations[0, [1, 4]] = True
    changed = media.clone()
    changed[:, 0] = randn(4, 24, seed=2)
    delta = (block(x, media, locations) - block(x, changed, locations)).abs().amax(-1)[0]  # (T,)
    assert delta[1:4].min() > 1e-4  # between the images: image 1 is the one attended
    assert (delta[4:].max() == 0) if immediate else (delta[4:].min() > 1e-4)


def test_more_media_tokens_than_images_is_an_error():
    model = tiny(seed=None).model
    ids, mask = encode(tiny(seed=None), ["<image> a <image> b"])
    with pytest.raises(ValueError, match="2 media tokens but only 1 images"):
        model(ids, mask, images(1, 0))


@torch.no_grad()
def test_the_language_model_called_on_its_own_is_unchanged():
    model = tiny().eval().model
    ids, mask = encode(tiny(seed=None), CAPTIONS)
    plain = type(model.lang_encoder)(model.lang_encoder.config).eval()
    plain.load_state_dict(model.lang_encoder.state_dict())
    torch.testing.assert_close(model.lang_encoder(input_ids=ids, attention_mask=mask).logits, plain(ids, mask).logits)


# ---- any causal LM, named by path ------------------------------------------------------------------------------
def with_lm(lm_model_type: str, decoder_layers: str, lm: dict[str, Any]) -> FlamingoWrapper:
    """`flamingo-tiny` around another LM, its `lm` block replaced (a merge would keep GPT-NeoX keys that GPT-2's
    config does not read, which is now an error), every parameter randomised."""
    cfg = Registry(roots=[REPO]).model("flamingo-tiny")
    arch = {**cfg.arch, "lm_model_type": lm_model_type, "decoder_layers": decoder_layers, "lm": lm}
    return randomize_(build_model(dataclasses.replace(cfg, arch=arch)), seed=0)


@pytest.mark.parametrize(
    "lm_model_type,decoder_layers,lm",
    [
        (
            "llama",
            "model.layers",
            {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            },
        ),
        ("gpt2", "transformer.h", {"n_embd": 32, "n_inner": 64, "n_layer": 2, "n_head": 2, "n_positions": 128}),
    ],
)
@torch.no_grad()
def test_other_causal_lms_by_decoder_layer_path(lm_model_type, decoder_layers, lm):
    model = with_lm(lm_model_type, decoder_layers, lm).eval()
    assert model.max_text_positions == model.model.lang_encoder.config.max_position_embeddings - 1
    toks = model.tokenize(CAPTIONS)
    assert model.pair_features(images(3, 0), **toks).shape == (3, 32)
    assert (model.pair_features(images(3, 0), **toks) - model.text_features(**toks)).abs().amax() > 1e-3


def test_bad_arch_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"'flamingo-tiny': key 'arch.decoder_layers': 'transformer\.h' is not a "):
        tiny({"arch": {"decoder_layers": "transformer.h"}}, seed=None)  # ...ModuleList ... in GPTNeoXForCausalLM
    with pytest.raises(ConfigError, match="arch.lm_model_type"):
        tiny({"arch": {"lm_model_type": None}}, seed=None)
    with pytest.raises(ConfigError, match="arch.perceiver.num_latent"):
        tiny({"arch": {"perceiver": {"num_latent": 4}}}, seed=None)


# ---- OpenFlamingo-layout checkpoints ---------------------------------------------------------------------------
def openflamingo_layout(model: FlamingoWrapper, prefix: str = "") -> dict[str, torch.Tensor]:
    """What an OpenFlamingo training run saves for this model: resampler, every gated block under both of the
    reference's names for it, and the LM's token embeddings (new rows for the added tokens) under their
    transformers-4 names (GPT-NeoX's `lm_head` was `embed_out`)."""
    flamingo, out = model.model, {}
    for k, v in flamingo.perceiver.state_dict().items():
        out[f"{prefix}perceiver.{k}"] = v.clone()
    for i, block in flamingo.gated_cross_attn_layers.items():
        for k, v in block.state_dict().items():
            out[f"{prefix}lang_encoder.gated_cross_attn_layers.{i}.{k}"] = v.clone()
            out[f"{prefix}lang_encoder.gpt_neox.layers.{i}.gated_cross_attn_layer.{k}"] = v.clone()
    lm = flamingo.lang_encoder.state_dict()
    out[f"{prefix}lang_encoder.gpt_neox.embed_in.weight"] = lm["gpt_neox.embed_in.weight"].clone()
    out[f"{prefix}lang_encoder.embed_out.weight"] = lm["lm_head.weight"].clone()
    return out


def trained(seed: int = 5) -> FlamingoWrapper:
    """`flamingo-tiny` as after OpenFlamingo training: backbones as initialised, the rest randomised."""
    model = tiny(seed=None)
    lm = model.model.lang_encoder
    for i, part in enumerate(
        [
            model.model.perceiver,
            model.model.gated_cross_attn_layers,
            lm.get_input_embeddings(),
            lm.get_output_embeddings(),
        ]
    ):
        randomize_(part, seed=seed + i)
    return model


def test_openflamingo_keys_map_onto_ours():
    model = tiny(seed=None).model
    rename, layers = lm_key_renamer(model.lang_encoder), "lang_encoder.gpt_neox.layers"
    cases = {
        "perceiver.layers.0.1.3.weight": "perceiver.layers.0.1.3.weight",
        "lang_encoder.gated_cross_attn_layers.3.ff_gate": "gated_cross_attn_layers.3.ff_gate",
        f"{layers}.3.gated_cross_attn_layer.attn.to_kv.weight": "gated_cross_attn_layers.3.attn.to_kv.weight",
        f"{layers}.2.decoder_layer.mlp.dense_h_to_4h.weight": f"{layers}.2.mlp.dense_h_to_4h.weight",
        "lang_encoder.old_decoder_blocks.2.attention.dense.bias": f"{layers}.2.attention.dense.bias",
        "module.lang_encoder.gpt_neox.embed_in.weight": "lang_encoder.gpt_neox.embed_in.weight",
        "lang_encoder.embed_out.weight": "lang_encoder.lm_head.weight",  # transformers 4 -> 5
    }
    assert {k: openflamingo_key(k, "gpt_neox.layers", rename) for k in cases} == cases
    assert set(cases.values()) <= set(model.state_dict())


def build_with_checkpoint(path: Path, **overrides: Any) -> FlamingoWrapper:
    return build_model(Registry(roots=[REPO]).model("flamingo-tiny", {"checkpoint": str(path), **overrides}))


@pytest.mark.parametrize("prefix", ["", "module."])
@torch.no_grad()
def test_openflamingo_checkpoint_loads_through_the_preset(tmp_path, prefix):
    source = trained().eval()
    torch.save(openflamingo_layout(source, prefix), tmp_path / "checkpoint.pt")
    for where in (tmp_path / "checkpoint.pt", tmp_path):  # the file, or a directory holding it
        loaded = build_with_checkpoint(where)
        assert loaded.checkpoint_report.unexpected == []
        toks, px = loaded.tokenize(CAPTIONS), images(3, 8)
        torch.testing.assert_close(loaded.pair_features(px, **toks), source.pair_features(px, **toks), atol=0, rtol=0)
        torch.testing.assert_close(loaded.text_features(**toks), source.text_features(**toks), atol=0, rtol=0)


def test_checkpoint_with_wrong_keys_names_them(tmp_path):
    state = openflamingo_layout(trained())
    state = {k.replace("perceiver.layers.0.", "perceiver.blocks.0."): v for k, v in state.items()}
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError) as err:
        build_with_checkpoint(tmp_path / "checkpoint.pt")
    msg = str(err.value)
    assert "\n" not in msg
    assert "weights missing ('perceiver.layers.0.0.norm_media.weight'" in msg
    assert "keys matching nothing: 'perceiver.blocks.0.0." in msg


def test_checkpoint_aliases_must_agree_and_shapes_fit(tmp_path):
    state = openflamingo_layout(trained())
    state["lang_encoder.gpt_neox.layers.1.gated_cross_attn_layer.attn_gate"] += 1
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="aliased keys .*layers.1.attn_gate.* hold different values"):
        build_with_checkpoint(tmp_path / "checkpoint.pt")
    state = openflamingo_layout(trained())
    rows = len(state["lang_encoder.gpt_neox.embed_in.weight"])
    state["lang_encoder.gpt_neox.embed_in.weight"] = state["lang_encoder.gpt_neox.embed_in.weight"][:-1]
    torch.save(state, tmp_path / "checkpoint.pt")
    shapes = rf"has shape \({rows - 1}, 32\), the model expects \({rows}, 32\) \(is the tokenizer"
    with pytest.raises(CheckpointError, match="embed_in.weight' " + shapes):
        build_with_checkpoint(tmp_path / "checkpoint.pt")


def test_checkpoint_keys_matching_nothing_are_reported(tmp_path):
    state = openflamingo_layout(trained())
    state["vision_encoder.conv1.weight"] = torch.zeros(1)  # open_clip's names: the HF tower keeps its weights
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.warns(UserWarning, match="ignored 1 checkpoint keys .*'vision_encoder.conv1.weight'"):
        model = build_with_checkpoint(tmp_path / "checkpoint.pt")
    assert model.checkpoint_report.unexpected == ["vision_encoder.conv1.weight"]


def test_missing_checkpoints_fail_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(CheckpointError, match="does not exist"):
        build_with_checkpoint(tmp_path / "nowhere.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import; never go online
    with pytest.raises(CheckpointError) as err:
        build_model(Registry(roots=[REPO]).model("flamingo"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "checkpoint.pt of 'openflamingo/OpenFlamingo-4B-vitl-rpj3b'" in msg
    assert "hf download openflamingo/OpenFlamingo-4B-vitl-rpj3b" in msg


def test_released_preset_pins_the_openflamingo_4b_layout():
    cfg = Registry(roots=[REPO]).model("flamingo")
    arch = yaml.safe_load((REPO / "models" / "flamingo.yaml").read_text())["arch"]
    assert cfg.checkpoint == "openflamingo/OpenFlamingo-4B-vitl-rpj3b"
    assert cfg.tokenizer == arch["lang_encoder"] == "togethercomputer/RedPajama-INCITE-Base-3B-v1"
    assert arch["vision_encoder"] == "openai/clip-vit-large-patch14"
    assert (arch["decoder_layers"], arch["cross_attn_every_n_layers"], arch["pad_token"]) == (
        "gpt_neox.layers",
        2,
        "<PAD>",
    )
    assert cfg.finetune["frozen"] == ["model.vision_encoder", "model.lang_encoder"]
