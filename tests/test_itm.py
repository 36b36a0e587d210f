"""Image-text matching: FLAVA's ITM head against HF `FlavaForPreTraining`, and ITM re-ranked retrieval against
ranking every pair by ITM."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_

from mmbench.config import parse_overrides
from mmbench.errors import CapabilityError
from mmbench.models import Capability, build_model

TEXTS = ["a red circle above two blue squares", "one green triangle", "the movie was great and the story was good"]


@torch.no_grad()
def test_flava_itm_logits_equal_flava_for_pretraining(registry):
    """Aligned pairs, ragged texts, all parameters randomised (the ITM head's too)."""
    from transformers import FlavaForPreTraining

    from mmbench.models.flava import flava_config

    wrapper = randomize_(build_model(registry.model("flava-tiny")), seed=3)
    reference = FlavaForPreTraining(flava_config(wrapper.cfg, len(wrapper.tokenizer))).eval()
    reference.flava.load_state_dict(wrapper.model.state_dict(), strict=True)
    reference.itm_head.load_state_dict(wrapper.itm_head.state_dict(), strict=True)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    tokens = wrapper.tokenize(TEXTS)
    assert (tokens["attention_mask"] == 0).any()
    # Unmasked inputs: HF computes ITM from its "masked" pass, here given the plain ids.
    theirs = reference(pixel_values=pixels, **tokens, input_ids_masked=tokens["input_ids"], return_loss=False)
    ours = wrapper.itm_logits(pixels, **tokens)  # (3, 2)
    diff = (ours - theirs.itm_logits).abs().max().item()
    print(f"parity flava itm_logits: max |diff| = {diff:.3g}")
    assert ours.shape == (3, 2) and diff <= 1e-5
    scores = wrapper.itm_scores(pixels, **tokens)  # (3,) log P(match)
    torch.testing.assert_close(scores, theirs.itm_logits.log_softmax(-1)[:, 1], rtol=0, atol=1e-5)
    # Pairing one image's states with many captions (what re-ranking does) scores the same as aligned inputs.
    states = wrapper.itm_image_states(pixels[:1]).expand(3, -1, -1)
    torch.testing.assert_close(
        wrapper.itm_scores_from_states(states, **tokens), wrapper.itm_scores(pixels[[0, 0, 0]], **tokens)
    )


def _saved_preset(registry, tmp_path, save_pretraining: bool):
    """flava-tiny's randomised weights saved as a FlavaForPreTraining (with itm_head) or a FlavaModel checkpoint."""
    from transformers import FlavaForPreTraining

    from mmbench.models.flava import flava_config

    original = randomize_(build_model(registry.model("flava-tiny")), seed=5)
    if save_pretraining:
        full = FlavaForPreTraining(flava_config(original.cfg, len(original.tokenizer)))
        full.flava.load_state_dict(original.model.state_dict())
        full.itm_head.load_state_dict(original.itm_head.state_dict())
        full.save_pretrained(tmp_path / "ckpt")
    else:
        original.model.save_pretrained(tmp_path / "ckpt")
    original.tokenizer.save_pretrained(tmp_path / "ckpt")
    overrides = parse_overrides(
        [f"model.checkpoint={tmp_path / 'ckpt'}", "model.random_init=false", "model.tokenizer=null"]
    )
    return original, build_model(registry.model("flava-tiny", overrides["model"]))


@torch.no_grad()
def test_flava_checkpoint_with_itm_head_loads_it(registry, tmp_path):
    original, loaded = _saved_preset(registry, tmp_path, save_pretraining=True)
    assert Capability.ITM in loaded.capabilities
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    tokens = original.tokenize(TEXTS)
    torch.testing.assert_close(loaded.itm_logits(pixels, **tokens), original.itm_logits(pixels, **tokens))
    torch.testing.assert_close(loaded.pair_features(pixels, **tokens), original.pair_features(pixels, **tokens))


@torch.no_grad()
def test_flava_checkpoint_without_itm_head_lacks_the_capability_with_the_reason(registry, tmp_path):
    original, loaded = _saved_preset(registry, tmp_path, save_pretraining=False)
    assert Capability.ITM not in loaded.capabilities and Capability.FUSION in loaded.capabilities
    pixels = torch.randn(2, 3, 32, 32)
    tokens = original.tokenize(TEXTS[:2])
    torch.testing.assert_close(loaded.pair_features(pixels, **tokens), original.pair_features(pixels, **tokens))
    with pytest.raises(CapabilityError, match="holds no image-text matching head"):
        loaded.require(Capability.ITM, "ITM re-ranked retrieval")
    with pytest.raises(CapabilityError, match="no ITM capability"):
        loaded.itm_scores(pixels, **tokens)
