"""Every wrapper accepts any image size a task asks for (VQAv2 fine-tunes at 480 px on towers trained at 224).

Each tiny preset, with every parameter randomised, is fed images at 2x and 1.5x its trained size through
`image_features`, `pair_features` and `image_embeddings`. Where a reference exists the interpolated result is
compared with it: HF's own forward with `interpolate_pos_encoding=True` (CLIP), and for FLAVA, whose
`FlavaModel.forward` cannot interpolate, `FlavaModel.forward` on a model built at the new size whose position table
is HF's interpolation of the trained one. At the trained size the outputs equal the HF paths the wrappers used
before they interpolated. BEiT-3 against unilm's rule: tests/test_beit3.py; Flamingo against open-flamingo at 2x:
tests/test_flamingo_parity.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_
from PIL import Image

from mmbench.config import Registry
from mmbench.models import Capability, build_model

TINY = ["beit3-tiny", "clip-tiny", "flamingo-tiny", "flava-tiny", "idefics-tiny"]
TEXTS = ["a red circle above two blue squares", "yes", "the cat sits left of the big yellow star"]


def tiny(name: str):
    return randomize_(build_model(Registry().model(name)), seed=7).eval()


def pixels(size: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(size))


@pytest.mark.parametrize("scale", [2.0, 1.5])
@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_every_tiny_preset_takes_larger_images(name, scale):
    model = tiny(name)
    native = model.preprocess.image_size
    size = int(native * scale)
    # The preset's own transform at the task's size, on a non-square photo-sized image.
    image = Image.effect_noise((3 * size, 2 * size), 60).convert("RGB")
    assert model.image_transform(image_size=size)(image).shape == (3, size, size)
    px, tokens = pixels(size), model.tokenize(TEXTS)
    out = {"image": model.image_features(px)}
    if Capability.FUSION in model.capabilities:
        out["pair"] = model.pair_features(px, **tokens)
    if Capability.CONTRASTIVE in model.capabilities:
        out["embedding"] = model.image_embeddings(px)
    for kind, value in out.items():
        assert value.shape == (3, model.feature_dims[kind]) and torch.isfinite(value).all(), kind
    # The positions matter: a different size gives different features, not a cropped or resampled copy.
    native_image = model.image_features(torch.nn.functional.interpolate(px, size=native, mode="bilinear"))
    assert (native_image - out["image"]).abs().max() > 1e-4


@pytest.mark.parametrize("size", [32, 64, 48])
@torch.no_grad()
def test_clip_at_any_size_equals_clip_model_forward(size):
    from transformers import CLIPModel

    wrapper = tiny("clip-tiny")
    reference = CLIPModel(wrapper.model.config).eval()
    reference.load_state_dict(wrapper.model.state_dict())
    px, tokens = pixels(size), wrapper.tokenize(TEXTS)
    interpolate = size != 32  # HF refuses other sizes without the flag
    out = reference(pixel_values=px, **tokens, interpolate_pos_encoding=interpolate)
    pooled = reference.vision_model(pixel_values=px, interpolate_pos_encoding=interpolate).pooler_output
    torch.testing.assert_close(wrapper.image_embeddings(px), out.image_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(wrapper.image_features(px), pooled, rtol=0, atol=1e-6)


def flava_at(wrapper, size: int):
    """`FlavaModel` built at `size` with the wrapper's weights, its position table HF's interpolation of theirs."""
    import copy

    from transformers import FlavaModel

    config = copy.deepcopy(wrapper.model.config)
    config.image_config.image_size = size
    reference = FlavaModel(config).eval()
    state = dict(wrapper.model.state_dict())
    embeddings = wrapper.model.image_model.embeddings
    grid = torch.zeros(1, 1 + (size // config.image_config.patch_size) ** 2, config.image_config.hidden_size)
    state["image_model.embeddings.position_embeddings"] = embeddings.interpolate_pos_encoding(grid, size, size)
    reference.load_state_dict(state)
    return reference


@pytest.mark.parametrize("size", [32, 64, 48])
@torch.no_grad()
def test_flava_at_any_size_equals_flava_model_forward_with_interpolated_positions(size):
    wrapper = tiny("flava-tiny")
    reference = flava_at(wrapper, size)
    px, tokens = pixels(size), wrapper.tokenize(TEXTS)
    assert (tokens["attention_mask"] == 0).any()  # ragged: the text mask reaches the multimodal encoder
    out = reference(pixel_values=px, **tokens)
    torch.testing.assert_close(wrapper.pair_features(px, **tokens), out.multimodal_output.last_hidden_state[:, 0])
    torch.testing.assert_close(wrapper.image_features(px), out.image_output.last_hidden_state[:, 0])
    projected = reference.image_projection(out.image_output.last_hidden_state[:, 0])
    torch.testing.assert_close(wrapper.image_embeddings(px), torch.nn.functional.normalize(projected, dim=-1))


@pytest.mark.parametrize("name", TINY)
@torch.no_grad()
def test_at_the_trained_size_features_are_unchanged(name):
    """The HF calls the wrappers made before they interpolated, on the same weights: equal bit for bit."""
    model = tiny(name)
    px, tokens = pixels(model.preprocess.image_size), model.tokenize(TEXTS)
    if name == "clip-tiny":
        before = {"image": model.model.vision_model(pixel_values=px).pooler_output}
    elif name == "flava-tiny":
        out = model.model(pixel_values=px, **tokens, output_hidden_states=True, return_dict=True)
        before = {
            "image": model.model.image_model(pixel_values=px).last_hidden_state[:, 0],
            "pair": out.multimodal_output.last_hidden_state[:, 0],
        }
    elif name == "flamingo-tiny":
        before = {"image": model.model.vision_encoder(pixel_values=px).pooler_output}
    elif name == "idefics-tiny":
        before = {"image": model.model.model.vision_model(pixel_values=px).pooler_output}
    else:  # BEiT-3 interpolated before this change; its trained-size table is returned as it is
        table = model.beit3.encoder.embed_positions.A.weight
        from mmbench.models.beit3_layers import interpolate_vision_positions

        assert interpolate_vision_positions(table, (4, 4)) is table
        return
    now = {"image": model.image_features(px)}
    if "pair" in before:
        now["pair"] = model.pair_features(px, **tokens)
    for kind in before:
        assert torch.equal(now[kind], before[kind]), kind
