"""BEiT-3 against the reference, `torchscale==0.3.0`'s `BEiT3`, on tiny dims with every parameter randomised.

The measured max abs differences are printed (run with `-rP` to see them) and recorded as junit properties.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's deprecation notice for the import path torchscale uses
        from torchscale.architecture.config import EncoderConfig
        from torchscale.model.BEiT3 import BEiT3
except ImportError as e:  # CI installs it from requirements/parity.txt
    pytest.skip(
        f"torchscale==0.3.0 is not importable ({e}); pip install --no-deps -r requirements/parity.txt",
        allow_module_level=True,
    )

from mmbench.config import Registry
from mmbench.models import build_model
from mmbench.models.beit3 import beit3_config
from mmbench.models.beit3_layers import Beit3Config, Beit3Model

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
CFG = Beit3Config(
    encoder_embed_dim=32,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_embed_dim=48,
    patch_size=8,
    img_size=32,
    vocab_size=50,
    max_source_positions=24,
)


def reference(cfg: Beit3Config) -> BEiT3:
    """torchscale's model as unilm's `modeling_utils._get_base_config` builds it (multiway, no output layer)."""
    ts_cfg = EncoderConfig(**asdict(cfg), multiway=True, no_output_layer=True)
    for k, v in asdict(cfg).items():  # EncoderConfig ignores unknown keywords: prove ours all mean something
        assert getattr(ts_cfg, k) == v, k
    return BEiT3(ts_cfg).eval()


def inputs(batch: int = 3, text_len: int = 9, vocab: int = 50, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pad = torch.zeros(batch, text_len, dtype=torch.bool)
    pad[0, 4:] = True  # ragged: 4, 7 and 9 real tokens
    pad[1, 7:] = True
    return {
        "pixel_values": torch.randn(batch, 3, size, size, generator=g),
        "input_ids": torch.randint(0, vocab, (batch, text_len), generator=g),
        "padding_mask": pad,
    }


def report(record_property, name: str, diff: float) -> None:
    record_property(f"max_abs_diff[{name}]", diff)
    print(f"BEiT-3 parity vs torchscale, {name}: max abs diff {diff:.3g}")
    assert diff <= TOL, f"{name}: {diff}"


@pytest.fixture(scope="module")
def pair() -> tuple[BEiT3, Beit3Model]:
    ref = randomize_(reference(CFG), seed=1)
    ours = Beit3Model(CFG).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same keys, same shapes, both ways
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    return ref, ours


MODES = {
    "image only": ({"visual_tokens"}, {"pixel_values"}),
    "text only, ragged padding": ({"textual_tokens", "text_padding_position"}, {"input_ids", "padding_mask"}),
    "text only, no padding mask": ({"textual_tokens"}, {"input_ids"}),
    "image+text, ragged padding": (
        {"visual_tokens", "textual_tokens", "text_padding_position"},
        {"pixel_values", "input_ids", "padding_mask"},
    ),
}
REF_NAMES = {"visual_tokens": "pixel_values", "textual_tokens": "input_ids", "text_padding_position": "padding_mask"}


@pytest.mark.parametrize("mode", list(MODES))
@torch.no_grad()
def test_backbone_equals_torchscale(pair, mode, record_property):
    ref, ours = pair
    x = inputs()
    ref_keys, our_keys = MODES[mode]
    expected = ref(**{k: x[REF_NAMES[k]] for k in ref_keys})["encoder_out"]
    actual = ours(**{k: x[k] for k in our_keys}).last_hidden_state
    assert actual.shape == expected.shape
    report(record_property, mode, (actual - expected).abs().max().item())


@torch.no_grad()
def test_without_final_norm_equals_torchscale_normalize_output_false(pair, record_property):
    """unilm builds its VQA and ImageNet models with `normalize_output=False`; our `final_norm=False` is that."""
    ref, ours = pair
    ref_plain = reference(replace(CFG, normalize_output=False))
    ref_plain.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("encoder.layer_norm.")})
    x = inputs()
    expected = ref_plain(
        visual_tokens=x["pixel_values"], textual_tokens=x["input_ids"], text_padding_position=x["padding_mask"]
    )["encoder_out"]
    actual = ours(**x, final_norm=False).last_hidden_state
    report(record_property, "image+text, no final LayerNorm", (actual - expected).abs().max().item())


@torch.no_grad()
def test_wrapper_heads_equal_unilm_heads_on_torchscale(record_property):
    """Every capability of `beit3-tiny`, recomputed from torchscale's outputs with unilm's head formulas."""
    wrapper = randomize_(build_model(Registry(roots=[ROOT]).model("beit3-tiny")), seed=2)
    arch = beit3_config(wrapper.cfg)
    backbone = {k.removeprefix("beit3."): v for k, v in wrapper.state_dict().items() if k.startswith("beit3.")}
    ref = reference(arch)
    ref.load_state_dict(backbone, strict=True)
    ref_plain = reference(replace(arch, normalize_output=False))
    ref_plain.load_state_dict({k: v for k, v in backbone.items() if not k.startswith("encoder.layer_norm.")})

    x = inputs(vocab=arch.vocab_size, size=arch.img_size)
    px, ids, pad = x["pixel_values"], x["input_ids"], x["padding_mask"]
    d = arch.encoder_embed_dim
    vision = ref(visual_tokens=px)["encoder_out"]
    text = ref(textual_tokens=ids, text_padding_position=pad)["encoder_out"]
    vision_plain = ref_plain(visual_tokens=px)["encoder_out"]
    joint_plain = ref_plain(visual_tokens=px, textual_tokens=ids, text_padding_position=pad)["encoder_out"]
    fc, pool = wrapper.fc_norm, wrapper.pooler
    expected = {  # modeling_finetune.py: ImageClassification, Retrieval, VisualQuestionAnswering
        "image_features": F.layer_norm(vision_plain[:, 1:].mean(1), (d,), fc.weight, fc.bias, fc.eps),
        "text_features": text[:, 0],
        "pair_features": torch.tanh(
            F.linear(
                F.layer_norm(joint_plain[:, 0], (d,), pool.norm.weight, pool.norm.bias, pool.norm.eps),
                pool.dense.weight,
                pool.dense.bias,
            )
        ),
        "image_embeddings": F.normalize(vision[:, 0] @ wrapper.vision_head.weight.T, dim=-1),
        "text_embeddings": F.normalize(text[:, 0] @ wrapper.language_head.weight.T, dim=-1),
    }
    actual = {
        "image_features": wrapper.image_features(px),
        "text_features": wrapper.text_features(input_ids=ids, padding_mask=pad),
        "pair_features": wrapper.pair_features(px, input_ids=ids, padding_mask=pad),
        "image_embeddings": wrapper.image_embeddings(px),
        "text_embeddings": wrapper.text_embeddings(input_ids=ids, padding_mask=pad),
    }
    for name in expected:
        assert actual[name].shape == expected[name].shape == (3, d)
        report(record_property, f"wrapper {name}", (actual[name] - expected[name]).abs().max().item())
