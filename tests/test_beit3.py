"""BEiT-3 without the reference: expert and padding invariants, the released checkpoint layout and its errors,
position interpolation, the tiny tokenizer's id layout, and the wrapper contract of `beit3-tiny`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import randomize_
from PIL import Image

from mmbench.config import Registry
from mmbench.errors import CapabilityError, CheckpointError, ConfigError
from mmbench.models import Capability, build_model
from mmbench.models.beit3 import Beit3Wrapper, beit3_config
from mmbench.models.beit3_layers import Beit3Model
from mmbench.models.beit3_tokenizer import SPM_FILENAME, tiny_sentencepiece, tiny_sentencepiece_model
from mmbench.schema import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
POSITIONS = "beit3.encoder.embed_positions.A.weight"


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path_factory, monkeypatch):
    """No network, and downloads/generated tokenizers go to a per-session temporary cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MMBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "mmbench-cache"))


@pytest.fixture(scope="module")
def tiny_cfg() -> ModelConfig:
    return Registry(roots=[ROOT]).model("beit3-tiny")


@pytest.fixture(scope="module")
def source(tiny_cfg) -> Beit3Wrapper:
    """`beit3-tiny` with every parameter (backbone and the four heads) randomised."""
    return randomize_(build_model(tiny_cfg), seed=3).eval()


def preset(root: Path, name: str, **changes: Any) -> ModelConfig:
    """A preset file like `beit3-tiny.yaml` with `changes` merged in, read back through the registry."""
    data = yaml.safe_load((ROOT / "models" / "beit3-tiny.yaml").read_text())
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models" / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return Registry(roots=[root]).model(name)


def from_file(tmp_path: Path, checkpoint: str, **changes: Any) -> Beit3Wrapper:
    return build_model(preset(tmp_path, "beit3-file", random_init=False, checkpoint=checkpoint, **changes))


def save_release(path: Path, state: dict[str, torch.Tensor], wrap: str | None = "model") -> Path:
    """As the unilm release: `{"model": {...}}` with unused task heads beside ours and the training args."""
    state = {**state, "head.weight": torch.randn(7, 32), "head.bias": torch.randn(7), "logit_scale": torch.tensor(2.6)}
    torch.save({wrap: state, "args": argparse.Namespace(lr=5e-4)} if wrap else state, path)
    return path


def batch(model: Beit3Wrapper, size: int = 32) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    tokens = model.tokenize(["a red circle", "two blue squares left of the big yellow star", "yes"])
    return pixels, tokens


@torch.no_grad()
def outputs(model: Beit3Wrapper, size: int = 32) -> dict[str, torch.Tensor]:
    pixels, tokens = batch(model, size)
    out = {
        "image": model.image_features(pixels),
        "text": model.text_features(**tokens),
        "pair": model.pair_features(pixels, **tokens),
    }
    if Capability.CONTRASTIVE in model.capabilities:
        out["image_emb"] = model.image_embeddings(pixels)
        out["text_emb"] = model.text_embeddings(**tokens)
    return out


def one_line_error(exc: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


# ---- invariants (no reference needed) --------------------------------------------------------------------------
@torch.no_grad()
def test_each_modality_only_uses_its_own_experts(tiny_cfg):
    model = randomize_(Beit3Model(beit3_config(tiny_cfg)), seed=4).eval()
    px = torch.randn(2, 3, 32, 32)
    ids = torch.randint(4, 200, (2, 6))
    before = {
        "image": model(pixel_values=px).last_hidden_state,
        "text": model(input_ids=ids).last_hidden_state,
        "joint": model(pixel_values=px, input_ids=ids).last_hidden_state,
    }
    language = [p for n, p in model.named_parameters() if ".B." in n or n.startswith("text_embed.")]
    vision = [p for n, p in model.named_parameters() if ".A." in n or n.startswith("vision_embed.")]
    # Every parameter belongs to exactly one modality.
    assert sorted(map(id, language + vision)) == sorted(map(id, model.parameters())) and len(language) > 10

    for p in language:
        p.add_(torch.randn_like(p))
    assert torch.equal(model(pixel_values=px).last_hidden_state, before["image"])
    assert not torch.allclose(model(input_ids=ids).last_hidden_state, before["text"])
    joint = model(pixel_values=px, input_ids=ids).last_hidden_state
    assert not torch.allclose(joint[:, :17], before["joint"][:, :17])  # the experts are joined by attention

    text_now = model(input_ids=ids).last_hidden_state
    for p in vision:
        p.add_(torch.randn_like(p))
    assert torch.equal(model(input_ids=ids).last_hidden_state, text_now)
    assert not torch.allclose(model(pixel_values=px).last_hidden_state, before["image"])


@torch.no_grad()
def test_padding_does_not_change_real_tokens(tiny_cfg):
    model = randomize_(Beit3Model(beit3_config(tiny_cfg)), seed=5).eval()
    px = torch.randn(2, 3, 32, 32)
    ids = torch.randint(4, 200, (2, 5))
    padded = torch.cat([ids, torch.randint(4, 200, (2, 4))], dim=1)  # pads hold arbitrary ids, not <pad>
    mask = torch.zeros(2, 9, dtype=torch.long)  # unilm passes 0/1 integers
    mask[:, 5:] = 1
    for vision in (None, px):
        short = model(pixel_values=vision, input_ids=ids).last_hidden_state
        long = model(pixel_values=vision, input_ids=padded, padding_mask=mask).last_hidden_state
        assert long.shape[1] == short.shape[1] + 4
        torch.testing.assert_close(long[:, : short.shape[1]], short, atol=1e-5, rtol=0)
        bool_mask = model(pixel_values=vision, input_ids=padded, padding_mask=mask.bool()).last_hidden_state
        assert torch.equal(long, bool_mask)
        unmasked = model(pixel_values=vision, input_ids=padded).last_hidden_state
        assert not torch.allclose(unmasked[:, : short.shape[1]], short, atol=1e-3)  # the mask did something


# ---- released checkpoint layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["model", "module", "bare torchscale backbone"])
def test_released_layout_loads_through_a_preset(tmp_path, source, layout):
    state = source.state_dict()
    if layout == "bare torchscale backbone":  # a torchscale BEiT3 state dict: no prefix, no heads
        state = {k.removeprefix("beit3."): v for k, v in state.items() if k.startswith("beit3.")}
    path = save_release(tmp_path / "beit3_tiny.pth", state, wrap=None if layout.startswith("bare") else layout)
    loaded = from_file(tmp_path, str(path))

    if layout.startswith("bare"):
        assert loaded.load_report.heads_fresh == ["vision_head", "language_head", "pooler", "fc_norm"]
        assert Capability.CONTRASTIVE not in loaded.capabilities
        torch.testing.assert_close(loaded.beit3.state_dict(), source.beit3.state_dict(), atol=0, rtol=0)
        return
    assert sorted(loaded.state_dict()) == sorted(source.state_dict())
    assert loaded.load_report.heads_loaded == ["vision_head", "language_head", "pooler", "fc_norm"]
    assert loaded.load_report.ignored == ["head.bias", "head.weight", "logit_scale"]
    assert loaded.capabilities == source.capabilities
    expected, actual = outputs(source), outputs(loaded)
    assert sorted(actual) == ["image", "image_emb", "pair", "text", "text_emb"]
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_checkpoint_without_retrieval_heads_has_no_contrastive_capability(tmp_path, source):
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(("vision_head.", "language_head."))}
    loaded = from_file(tmp_path, str(save_release(tmp_path / "vqa.pth", state)))
    assert loaded.capabilities == Capability.IMAGE | Capability.TEXT | Capability.FUSION
    assert loaded.load_report.heads_fresh == ["vision_head", "language_head"]
    with pytest.raises(CapabilityError) as e:
        loaded.image_embeddings(torch.randn(1, 3, 32, 32))
    one_line_error(e, "vision_head/language_head")
    assert torch.equal(outputs(loaded)["pair"], outputs(source)["pair"])  # the pooler did load


def test_missing_checkpoint_file_is_one_line(tmp_path):
    with pytest.raises(CheckpointError) as e:
        from_file(tmp_path, str(tmp_path / "nope.pth"))
    one_line_error(e, str(tmp_path / "nope.pth"), "does not exist")


@pytest.mark.parametrize(
    "corrupt, needles",
    [
        (lambda sd: {"model": {"fc.weight": torch.zeros(2, 2)}}, ["holds no BEiT-3 weights", "'fc.weight'"]),
        (
            lambda sd: {"model": {k: v for k, v in sd.items() if "layers.1.ffn.B.fc2" not in k}},
            ["2 backbone keys missing", "beit3.encoder.layers.1.ffn.B.fc2.bias"],
        ),
        (
            lambda sd: {"model": {k: v for k, v in sd.items() if "encoder.layer_norm" not in k}},
            ["arch.normalize_output: false"],
        ),
        (
            lambda sd: {"model": {**sd, "beit3.text_embed.weight": torch.zeros(64010, 32)}},
            ["beit3.text_embed.weight has shape (64010, 32)", "(320, 32)"],
        ),
        (lambda sd: {"model": {**sd, "pooler.norm.weight": torch.zeros(5)}}, ["pooler.norm.weight"]),
    ],
    ids=["no BEiT-3 keys", "missing layer", "no final norm", "wrong vocab", "bad head shape"],
)
def test_wrong_checkpoints_are_one_line_errors(tmp_path, source, corrupt, needles):
    path = tmp_path / "wrong.pth"
    torch.save(corrupt(source.state_dict()), path)
    with pytest.raises(CheckpointError) as e:
        from_file(tmp_path, str(path))
    one_line_error(e, str(path), *needles)


def test_unreadable_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        from_file(tmp_path, str(path))
    one_line_error(e, "cannot read checkpoint", str(path))


def test_release_url_is_downloaded_once_into_the_cache(tmp_path, monkeypatch, source):
    monkeypatch.setenv("MMBENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "remote").mkdir()
    remote = save_release(tmp_path / "remote" / "beit3_tiny_release.pth", source.state_dict())
    first = from_file(tmp_path, remote.as_uri())  # file:// exercises the download path without a network
    cached = tmp_path / "cache" / "checkpoints" / "beit3_tiny_release.pth"
    assert cached.is_file() and first.load_report.path == str(cached)
    remote.unlink()
    second = from_file(tmp_path, remote.as_uri())  # served from the cache now
    assert torch.equal(outputs(second)["image_emb"], outputs(source)["image_emb"])

    with pytest.raises(CheckpointError) as e:
        from_file(tmp_path, (tmp_path / "remote" / "missing.pth").as_uri())
    one_line_error(e, "cannot download checkpoint", "missing.pth", "place it at", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "name, filename",
    [("beit3", "beit3_base_itc"), ("beit3-base", "beit3_base_itc"), ("beit3-large", "beit3_large_itc")],
)
def test_release_presets_fail_cleanly_offline(name, filename):
    with pytest.raises(CheckpointError) as e:
        build_model(Registry(roots=[ROOT]).model(name))
    url = f"https://github.com/addf400/files/releases/download/beit3/{filename}_patch16_224.pth"
    one_line_error(e, url, "offline", "place it at", f"checkpoints/{filename}_patch16_224.pth", "--set model.")


@pytest.mark.parametrize("name, params", [("beit3-base", 222e6), ("beit3-large", 674e6)])
def test_release_presets_have_the_published_size(name, params):
    """unilm's README: BEiT3-base-itc 222M, BEiT3-large-itc 674M parameters (backbone + the two ITC heads)."""
    cfg = Registry(roots=[ROOT]).model(name)
    assert cfg.preprocess.mean == cfg.preprocess.std == [0.5, 0.5, 0.5]
    arch = beit3_config(cfg)
    with torch.device("meta"):
        backbone = Beit3Model(arch)
    total = sum(p.numel() for p in backbone.parameters()) + 2 * arch.encoder_embed_dim**2
    assert abs(total - params) < 1e6, total


# ---- position interpolation --------------------------------------------------------------------------------------
def unilm_interpolation(table: torch.Tensor, new_side: int) -> torch.Tensor:
    """The recipe of unilm `utils.load_model_and_may_interpolate`, written out: 3 extra rows kept, patch grid
    resized bicubically (align_corners=False)."""
    extra, grid = table[:3], table[3:]
    side = int(math.sqrt(grid.shape[0]))
    grid = grid.reshape(-1, side, side, table.shape[-1]).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return torch.cat([extra.unsqueeze(0), grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1).squeeze(0)


@pytest.mark.parametrize("size", [64, 48])  # 2x and 1.5x the trained 32 px
def test_position_table_is_interpolated_for_larger_images(tmp_path, source, size):
    table = source.state_dict()[POSITIONS]  # (3 + 4*4, 32): trained at 32 px, patch 8
    side = size // 8
    path = save_release(tmp_path / "at32.pth", source.state_dict())
    loaded = from_file(tmp_path, str(path), preprocess={"image_size": size, "resize": size})
    assert loaded.load_report.interpolated == (4, side)
    new = loaded.state_dict()[POSITIONS]
    assert new.shape == (3 + side * side, 32)
    assert torch.equal(new[:3], table[:3])
    torch.testing.assert_close(new, unilm_interpolation(table, side), atol=1e-6, rtol=0)
    timm_layers = pytest.importorskip("timm.layers")  # a second, independent implementation
    by_timm = timm_layers.resample_abs_pos_embed(table[None], [side, side], num_prefix_tokens=3, antialias=False)[0]
    torch.testing.assert_close(new, by_timm, atol=1e-5, rtol=0)

    # A model kept at 32 px and fed larger images interpolates on the fly (unilm's rule, checked above as the table
    # a checkpoint load produces): the same numbers.
    torch.testing.assert_close(outputs(source, size=size), outputs(loaded, size=size), atol=1e-5, rtol=0)


def test_position_table_at_its_trained_size_is_unchanged(tmp_path, source):
    loaded = from_file(tmp_path, str(save_release(tmp_path / "at32.pth", source.state_dict())))
    assert loaded.load_report.interpolated is None
    assert torch.equal(loaded.state_dict()[POSITIONS], source.state_dict()[POSITIONS])


# ---- tokenizer ---------------------------------------------------------------------------------------------------
def test_tiny_tokenizer_has_the_fairseq_layout():
    import sentencepiece as spm

    tok = tiny_sentencepiece(64)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_sentencepiece_model() / SPM_FILENAME))
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == sp.get_piece_size() + 1 == len(tok) - 1
    text = "A red circle is left of the blue square, and 42 dogs sit near a Zebra ☃."
    pieces = sp.encode(text)
    assert sp.unk_id() in pieces  # the snowman: sentencepiece's <unk> (0) must become 3, not 0 + 1
    assert tok(text, add_special_tokens=False).input_ids == [3 if i == sp.unk_id() else i + 1 for i in pieces]

    ordinary = "the cat and the dog play with two small red balls in the garden"
    ids = tok(ordinary).input_ids
    assert ids[0] == 0 and ids[-1] == 2 and tok.unk_token_id not in ids
    for word in ("red", "circle", "square", "left"):  # frequent words of the tiny corpus are single pieces
        assert sp.piece_to_id("▁" + word) != sp.unk_id()
        assert tok(word, add_special_tokens=False).input_ids == [sp.piece_to_id("▁" + word) + 1]


def test_tiny_sentencepiece_model_is_deterministic(tmp_path, monkeypatch):
    models = []
    for name in ("a", "b"):
        monkeypatch.setenv("MMBENCH_CACHE", str(tmp_path / name))
        models.append((tiny_sentencepiece_model() / SPM_FILENAME).read_bytes())
    assert models[0] == models[1]


def test_tokenize_returns_ids_and_padding_mask(source):
    tokens = source.tokenize(["a red circle", "is the star blue"], pairs=["yes", "no it is not"], max_length=8)
    assert sorted(tokens) == ["input_ids", "padding_mask"] and tokens["padding_mask"].dtype == torch.bool
    ids, pad = tokens["input_ids"], tokens["padding_mask"]
    assert ids.shape == pad.shape and ids.shape[1] <= 8
    assert torch.equal(ids[pad], torch.full_like(ids[pad], source.tokenizer.pad_token_id))
    assert (ids[:, 0] == 0).all() and (ids == 2).sum(dim=1).tolist() == [3, 3]  # <s> a </s></s> b </s>


# ---- contract ----------------------------------------------------------------------------------------------------
def test_tiny_preset_contract(tiny_cfg):
    model = build_model(tiny_cfg)  # build time: benchmarks/build.py (no timed tests)
    assert model.capabilities == Capability.IMAGE | Capability.TEXT | Capability.FUSION | Capability.CONTRASTIVE
    assert model.feature_dims == {"image": 32, "text": 32, "pair": 32, "embedding": 32}
    out = outputs(model)
    for name, key in [("image", "image"), ("text", "text"), ("pair", "pair"), ("image_emb", "embedding")]:
        assert out[name].shape == (3, model.feature_dims[key]) and out[name].dtype == torch.float32
    for name in ("image_emb", "text_emb"):
        torch.testing.assert_close(out[name].norm(dim=-1), torch.ones(3))
    assert torch.equal(outputs(build_model(tiny_cfg))["pair"], out["pair"])  # seeded init


def test_image_transform_resizes_to_a_square_without_cropping(source):
    image = Image.new("RGB", (64, 32), "white")
    image.paste((0, 0, 0), (0, 0, 16, 32))  # left quarter black: a centre crop would not see it
    x = source.image_transform()(image)
    assert x.shape == (3, 32, 32)
    assert x[:, :, :7].max() < -0.95 and x[:, :, 10:].min() > 0.95  # mean = std = 0.5


def test_small_vocab_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_model(preset(tmp_path, "beit3-smallvocab", arch={"vocab_size": 100}))
    one_line_error(e, "arch.vocab_size")
