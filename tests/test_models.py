"""Wrapper contract for every preset that builds offline, plus the CLIP/FLAVA specifics proven against HF."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import randomize_
from PIL import Image

from mmbench.config import parse_overrides
from mmbench.errors import CapabilityError, CheckpointError, ConfigError
from mmbench.models import Capability, build_model
from mmbench.models.tokenizers import BUILTIN, TINY_WORDS, tiny_bpe, tiny_wordpiece

SENTENCES = ["a red circle above two blue squares", "the movie was great and the story was good"]


def _offline_presets(registry):
    return [n for n in sorted(registry.model_files) if registry.model(n).random_init]


def pytest_generate_tests(metafunc):
    if "tiny_name" in metafunc.fixturenames:
        from mmbench.config import Registry

        metafunc.parametrize("tiny_name", _offline_presets(Registry()))


def test_tiny_presets_contract(registry, tiny_name):
    model = build_model(registry.model(tiny_name))  # build time: benchmarks/build.py (no timed tests)
    assert not model.training
    size = model.cfg.preprocess.image_size
    pixels = torch.stack([model.image_transform()(Image.new("RGB", (size * 2, size), c)) for c in ("red", "blue")])
    assert pixels.shape == (2, 3, size, size)
    tokens = model.tokenize(SENTENCES)
    with torch.no_grad():
        if Capability.IMAGE in model.capabilities:
            assert model.image_features(pixels).shape == (2, model.feature_dims["image"])
        if Capability.TEXT in model.capabilities:
            assert model.text_features(**tokens).shape == (2, model.feature_dims["text"])
        if Capability.FUSION in model.capabilities:
            assert model.pair_features(pixels, **tokens).shape == (2, model.feature_dims["pair"])
        if Capability.CONTRASTIVE in model.capabilities:
            img, txt = model.image_embeddings(pixels), model.text_embeddings(**tokens)
            assert img.shape == txt.shape == (2, model.feature_dims["embedding"])
            torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
            torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
        else:
            with pytest.raises(CapabilityError):
                model.image_embeddings(pixels)


def test_tiny_presets_are_deterministic(registry, tiny_name):
    a, b = build_model(registry.model(tiny_name)), build_model(registry.model(tiny_name))
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("make", [tiny_wordpiece, tiny_bpe])
def test_tiny_tokenizers_know_ordinary_words(make):
    tok = make()
    ids = tok(SENTENCES[0] + " xylophone quartz")["input_ids"]
    inner = ids[1:-1]  # drop the start/end specials (CLIP's unknown token *is* its end token)
    assert tok.unk_token_id not in inner
    assert len(tok) > 200
    for word in TINY_WORDS:
        assert len(tok(word)["input_ids"]) == 3, f"vocabulary word {word!r} must be a single token"


def test_tiny_tokenizers_are_the_same_in_every_process(tmp_path):
    """Token ids must not depend on the process (hash seeds, trainer tie-breaks): a tiny model's numbers would."""
    code = (
        "import hashlib, json; from mmbench.models.tokenizers import BUILTIN, builtin_tokenizer\n"
        "for n in sorted(BUILTIN):\n"
        "    v = json.dumps(builtin_tokenizer(n, 77).get_vocab(), sort_keys=True)\n"
        "    print(n, hashlib.sha256(v.encode()).hexdigest())"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            # a fresh cache per process: a tokenizer trained once and cached would hide run-to-run differences
            env={**os.environ, "PYTHONHASHSEED": seed, "MMBENCH_CACHE": str(tmp_path / seed)},
        ).stdout.split()
        for seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1] and len(outputs[0]) == 2 * len(BUILTIN) >= 6


def test_clip_tiny_pools_at_the_eos_token(registry):
    model = build_model(registry.model("clip-tiny"))
    text_cfg = model.model.config.text_config
    assert text_cfg.eos_token_id == model.tokenizer.eos_token_id != 2
    tokens = model.tokenize(SENTENCES)
    with torch.no_grad():
        hidden = model.model.text_model(**tokens).last_hidden_state  # (B, T, D), after the final LayerNorm
        pooled = model.text_features(**tokens)
    eos_pos = (tokens["input_ids"] == text_cfg.eos_token_id).int().argmax(dim=-1)
    assert (eos_pos > 0).all()
    torch.testing.assert_close(pooled, hidden[torch.arange(2), eos_pos])
    assert not torch.allclose(pooled, hidden[:, 0])


def test_flava_contrastive_embeddings_match_flava_for_pretraining(registry):
    from transformers import FlavaForPreTraining

    from mmbench.models.flava import flava_config

    wrapper = build_model(registry.model("flava-tiny"))
    randomize_(wrapper.model, seed=1)
    reference = FlavaForPreTraining(flava_config(wrapper.cfg, len(wrapper.tokenizer))).eval()
    missing, unexpected = reference.flava.load_state_dict(wrapper.model.state_dict(), strict=True)
    assert not missing and not unexpected
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = wrapper.tokenize(SENTENCES + ["one green triangle"])
    with torch.no_grad():
        out = reference(pixel_values=pixels, **tokens, return_loss=False)
        img, txt = wrapper.image_embeddings(pixels), wrapper.text_embeddings(**tokens)
        ours = img @ txt.T * reference.flava.logit_scale.exp()
        via_features = wrapper.model.get_image_features(pixel_values=pixels).pooler_output[:, 0]
    torch.testing.assert_close(ours, out.contrastive_logits_per_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(img, torch.nn.functional.normalize(via_features, dim=-1))


@pytest.mark.parametrize("name", ["clip-tiny", "flava-tiny"])
def test_save_pretrained_roundtrip_through_a_preset(registry, tmp_path, name):
    original = build_model(registry.model(name))
    randomize_(original.model, seed=2)
    original.model.save_pretrained(tmp_path / "ckpt")
    original.tokenizer.save_pretrained(tmp_path / "ckpt")
    overrides = parse_overrides(
        [f"model.checkpoint={tmp_path / 'ckpt'}", "model.random_init=false", "model.tokenizer=null"]
    )
    loaded = build_model(registry.model(name, overrides["model"]))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_embeddings(pixels), original.image_embeddings(pixels), rtol=0, atol=0)
        t1, t2 = loaded.tokenize(SENTENCES), original.tokenize(SENTENCES)
        assert torch.equal(t1["input_ids"], t2["input_ids"])
        torch.testing.assert_close(loaded.text_embeddings(**t1), original.text_embeddings(**t2), rtol=0, atol=0)


def test_missing_hub_checkpoint_offline_is_one_clear_line(registry):
    cfg = registry.model("flava", parse_overrides(["model.checkpoint=nobody/not-a-real-flava"])["model"])
    with pytest.raises(CheckpointError) as err:
        build_model(cfg)
    msg = str(err.value)
    assert "nobody/not-a-real-flava" in msg and "HF_HUB_OFFLINE" in msg and "--set model.checkpoint=" in msg
    assert "\n" not in msg


def test_missing_local_checkpoint_names_the_path(registry, tmp_path):
    cfg = registry.model("clip", parse_overrides([f"model.checkpoint={tmp_path / 'nope'}"])["model"])
    with pytest.raises(CheckpointError, match=r"checkpoint path .*nope does not exist"):
        build_model(cfg)


# ---- unknown keys inside `arch` (HF config classes keep unknown kwargs silently) -----------------------------
def test_a_typo_inside_a_nested_arch_block_exits_2_naming_the_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mmbench", "run", "--model", "clip-tiny", "--task", "flickr30k", "--data", "synthetic"]
        + ["--output", str(tmp_path / "out"), "--set", "model.arch.vision.hidden_sz=3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "clip-tiny.yaml" in lines[0] and "'arch.vision.hidden_sz'" in lines[0] and "'hidden_size'" in lines[0]
    assert not (tmp_path / "out").exists()  # found before any work


@pytest.mark.parametrize(
    "name, override, key, suggestion",
    [
        ("clip-tiny", "model.arch.text.max_position_embedding=64", "arch.text.max_position_embedding",
         "max_position_embeddings"),
        ("clip-tiny", "model.arch.projection_dims=8", "arch.projection_dims", "projection_dim"),
        ("flava-tiny", "model.arch.image.num_hidden_layer=1", "arch.image.num_hidden_layer", "num_hidden_layers"),
        ("flava-tiny", "model.arch.multimodal.use_cls_tokens=false", "arch.multimodal.use_cls_tokens",
         "use_cls_token"),
        ("flava-tiny", "model.arch.codebook.num_group=1", "arch.codebook.num_group", "num_groups"),
        ("flamingo-tiny", "model.arch.lm.intermediate_sz=8", "arch.lm.intermediate_sz", "intermediate_size"),
        ("flamingo-tiny", "model.arch.vision.patch_sz=4", "arch.vision.patch_sz", "patch_size"),
        ("flamingo-tiny", "model.arch.perceiver.num_latent=4", "arch.perceiver.num_latent", "num_latents"),
        ("flamingo-tiny", "model.arch.lm_model_type=gpt_neo_x", "arch.lm_model_type", "gpt_neox"),
        ("beit3-tiny", "model.arch.encoder_layer=1", "arch.encoder_layer", "encoder_layers"),
        ("flava-tiny", "model.preprocess.resize_mode=squash", "preprocess.resize_mode", "square"),
    ],
)  # fmt: skip
def test_unknown_keys_at_any_depth_are_errors_with_close_matches(registry, name, override, key, suggestion):
    with pytest.raises(ConfigError) as err:
        registry.model(name, parse_overrides([override])["model"])
    msg = str(err.value)
    assert f"'{key}'" in msg and f"'{suggestion}'" in msg and f"{name}.yaml" in msg and "\n" not in msg, msg


def test_keys_the_hf_config_reads_under_another_name_are_accepted(registry):
    """GPT-2's `n_embd` is what `hidden_size` maps to; GPT-NeoX's legacy `rotary_pct` is converted on read."""
    gpt2 = parse_overrides(["model.arch.lm_model_type=gpt2", "model.arch.decoder_layers=transformer.h"])["model"]
    gpt2["arch"]["lm"] = {"n_embd": 32}
    with pytest.raises(ConfigError, match=r"'arch.lm.intermediate_size' is not a GPT2Config setting"):
        registry.model("flamingo-tiny", gpt2)  # merged over the preset's GPT-NeoX block: GPT-2 has no such field
    cfg = registry.model("flamingo-tiny", parse_overrides(["model.arch.lm.rotary_pct=0.5"])["model"])
    assert build_model(cfg).model.lang_encoder.config.rope_parameters["partial_rotary_factor"] == 0.5


# ---- parity with the HF reference forward, every parameter randomised ------------------------------------------
PAIRS = ["is the circle red", "yes", "two blue squares are left of the big yellow star"]


@torch.no_grad()
def test_clip_embeddings_and_features_equal_clip_model_forward(registry):
    from transformers import CLIPModel

    wrapper = randomize_(build_model(registry.model("clip-tiny")), seed=4)
    reference = CLIPModel(wrapper.model.config).eval()
    reference.load_state_dict(wrapper.model.state_dict())  # strict: the same parameters, fresh modules
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    tokens = wrapper.tokenize(SENTENCES + ["one green triangle"])
    assert (tokens["attention_mask"] == 0).any()  # ragged: pooling must find each row's EOS
    out = reference(pixel_values=pixels, **tokens)
    pooled_image = reference.vision_model(pixel_values=pixels).pooler_output
    pooled_text = reference.text_model(**tokens).pooler_output
    checks = {
        "image_embeddings": (wrapper.image_embeddings(pixels), out.image_embeds),
        "text_embeddings": (wrapper.text_embeddings(**tokens), out.text_embeds),
        "image_features": (wrapper.image_features(pixels), pooled_image),
        "text_features": (wrapper.text_features(**tokens), pooled_text),
        "pair_features": (wrapper.pair_features(pixels, **tokens), torch.cat([pooled_image, pooled_text], -1)),
    }
    for what, (ours, theirs) in checks.items():
        diff = (ours - theirs).abs().max().item()
        print(f"parity clip {what}: max |diff| = {diff:.3g}")
        assert diff <= 1e-6, what
    # the logits CLIPModel itself computes from those embeddings
    torch.testing.assert_close(
        checks["image_embeddings"][0] @ checks["text_embeddings"][0].T * reference.logit_scale.exp(),
        out.logits_per_image,
    )


@pytest.mark.parametrize("with_pairs", [False, True])
@torch.no_grad()
def test_flava_features_equal_flava_model_forward(registry, with_pairs):
    """image_output / text_output / multimodal_output of `FlavaModel.forward`: [CLS] after each encoder's final
    LayerNorm. Ragged texts, and sentence pairs (segment ids reach the text encoder)."""
    from transformers import FlavaModel

    wrapper = randomize_(build_model(registry.model("flava-tiny")), seed=6)
    reference = FlavaModel(wrapper.model.config).eval()
    reference.load_state_dict(wrapper.model.state_dict())
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    tokens = wrapper.tokenize(SENTENCES + ["one green triangle"], PAIRS if with_pairs else None)
    assert (tokens["attention_mask"] == 0).any() and (tokens["token_type_ids"] == 1).any() == with_pairs
    out = reference(pixel_values=pixels, **tokens)
    checks = {
        "image_features": (wrapper.image_features(pixels), out.image_output.last_hidden_state[:, 0]),
        "text_features": (wrapper.text_features(**tokens), out.text_output.last_hidden_state[:, 0]),
        "pair_features": (wrapper.pair_features(pixels, **tokens), out.multimodal_output.last_hidden_state[:, 0]),
    }
    for what, (ours, theirs) in checks.items():
        diff = (ours - theirs).abs().max().item()
        print(f"parity flava {what}: max |diff| = {diff:.3g}")
        assert diff <= 1e-6, what


# ---- text length: never more than the text encoder's positions ---------------------------------------------------
LONG = " ".join(["the red circle is left of the blue square"] * 240)  # ~2160 words: beyond flamingo-tiny's 2048 too


@pytest.mark.parametrize(
    "name, positions",
    [("clip-tiny", 77), ("flava-tiny", 77), ("beit3-tiny", 128 - 2), ("flamingo-tiny", 2048 - 1)],
)
@torch.no_grad()
def test_tokenize_never_exceeds_the_text_positions(registry, name, positions):
    """CLIP/FLAVA: text_config.max_position_embeddings; BEiT-3: its language position table after fairseq's two
    unused rows; Flamingo: the LM's positions less the one `pair_features` gives its `<image>` token."""
    model = build_model(registry.model(name))
    assert model.max_text_positions == positions
    tokens = model.tokenize([LONG, "yes"], max_length=4096)  # a caller asking for more than the model takes
    assert tokens["input_ids"].shape[1] == positions
    assert model.tokenize([LONG], max_length=16)["input_ids"].shape[1] == 16  # shorter requests are kept
    pixels = torch.randn(2, 3, 32, 32)
    if Capability.TEXT in model.capabilities:
        assert model.text_features(**tokens).shape[0] == 2
    assert model.pair_features(pixels, **tokens).shape[0] == 2


def test_flava_text_positions_come_from_its_config(registry):
    """flava-full's text encoder has 512 positions (FlavaTextConfig's default); the wrapper reads the config."""
    from transformers import FlavaTextConfig

    assert FlavaTextConfig().max_position_embeddings == 512
    cfg = registry.model("flava-tiny", parse_overrides(["model.arch.text.max_position_embeddings=512"])["model"])
    assert build_model(cfg).max_text_positions == 512
