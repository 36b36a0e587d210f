"""The model families beyond the presets (SigLIP, HF text and vision encoders, timm, open_clip), each proven against its
own library on randomised weights.

For every family a tiny model is built with the library, EVERY parameter randomised (LayerNorms, biases, [CLS] and
position tables, logit scale/bias included), saved in the library's own format (HF `save_pretrained` folder with its
tokenizer / image processor; a timm state dict as safetensors; an open_clip config folder or state-dict file), and
loaded through the wrapper from a `ModelConfig` that points at the saved files. The wrapper's features must equal the
library's own forward on the same inputs, its image transform the library's own on a PIL image, and a non-default
image size must run. One task per family runs end to end from a model YAML in a `$MMBENCH_REGISTRY` folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import randomize_
from PIL import Image

from mmbench.errors import CapabilityError, ConfigError
from mmbench.models import Capability, build_model
from mmbench.schema import ModelConfig, PreprocessConfig

TEXTS = ["a red circle above two blue squares", "the movie was great", "one green triangle"]
PAIRS = ["yes", "the story was good and the film was long", "a cat"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TIMM_VIT = {"model_name": "test_vit", "kwargs": {"img_size": 32}, "pretrained_cfg_overlay": {"input_size": [3, 32, 32]}}
TIMM_CNN = {"model_name": "test_resnet", "pretrained_cfg_overlay": {"input_size": [3, 32, 32]}}
OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def photo(width: int = 50, height: int = 37) -> Image.Image:
    """A non-square image with structure, so that resize filters and crop offsets show."""
    gen = torch.Generator().manual_seed(width * height)
    return Image.fromarray((torch.rand(height, width, 3, generator=gen) * 255).to(torch.uint8).numpy())


def pixels(size: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(size))


def config(name: str, wrapper: str, checkpoint: Path | str | None, **kw) -> ModelConfig:
    return ModelConfig(name=name, wrapper=wrapper, checkpoint=str(checkpoint) if checkpoint else None, **kw)


# ---- the tiny checkpoints, each in its library's own format ------------------------------------------------------
def _roberta_tokenizer():
    """A tiny byte-level BPE RoBERTa tokenizer (offline): byte symbols plus merges making each tiny word one token,
    with and without its leading-space marker."""
    from transformers import RobertaTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from mmbench.models.tokenizers import _words, chained_merges

    words = list(_words())
    merges = chained_merges([["Ġ", *w] for w in words] + [list(w) for w in words])
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *bytes_to_unicode().values(), *(a + b for a, b in merges), "<mask>"]
    return RobertaTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges=merges)


def _save_hf(folder: Path, model, *processors) -> Path:
    randomize_(model, seed=len(folder.name))
    model.save_pretrained(folder)
    for p in processors:
        p.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    import open_clip
    import timm
    from safetensors.torch import save_file
    from transformers import (
        BertConfig,
        BertModel,
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        RobertaConfig,
        RobertaModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipTokenizer,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    from mmbench.models.beit3_tokenizer import SPM_FILENAME, tiny_sentencepiece_model
    from mmbench.models.tokenizers import tiny_wordpiece

    root = tmp_path_factory.mktemp("families")
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    out: dict[str, Path] = {}

    spm = SiglipTokenizer(vocab_file=str(tiny_sentencepiece_model() / SPM_FILENAME), model_max_length=16)
    text = {**small, "vocab_size": len(spm), "max_position_embeddings": 16, "pad_token_id": spm.pad_token_id}
    text.update(bos_token_id=None, eos_token_id=spm.eos_token_id)
    siglip = SiglipModel(SiglipConfig(text_config=text, vision_config={**small, "image_size": 32, "patch_size": 8}))
    square = {"height": 32, "width": 32}
    out["siglip"] = _save_hf(root / "siglip", siglip, spm, SiglipImageProcessor(size=square))

    wordpiece = tiny_wordpiece(512)
    bert = BertModel(BertConfig(**small, vocab_size=len(wordpiece), max_position_embeddings=40, type_vocab_size=2))
    out["bert"] = _save_hf(root / "bert", bert, wordpiece)
    bpe = _roberta_tokenizer()
    roberta = RobertaModel(
        RobertaConfig(**small, vocab_size=len(bpe), max_position_embeddings=42, pad_token_id=bpe.pad_token_id)
    )
    out["roberta"] = _save_hf(root / "roberta", roberta, bpe)

    vit = ViTModel(ViTConfig(**small, image_size=32, patch_size=8))
    out["vit"] = _save_hf(root / "vit", vit, ViTImageProcessor(size=square))
    dino = Dinov2Model(Dinov2Config(**small, image_size=32, patch_size=8, mlp_ratio=2))
    bit = BitImageProcessor(
        size={"shortest_edge": 40},
        crop_size=square,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    )
    out["dinov2"] = _save_hf(root / "dinov2", dino, bit)

    for name, arch in (("timm_vit", TIMM_VIT), ("timm_cnn", TIMM_CNN)):
        model = randomize_(timm.create_model(arch["model_name"], num_classes=0, **arch.get("kwargs", {})), seed=5)
        save_file(model.state_dict(), root / f"{name}.safetensors")
        out[name] = root / f"{name}.safetensors"

    # open_clip's hub layout: open_clip_config.json (model_cfg + preprocess_cfg) beside the weights
    model = randomize_(open_clip.model.CLIP(**OPEN_CLIP_CFG), seed=6)
    folder = root / "open_clip"
    folder.mkdir()
    cfg = {"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    out["open_clip"] = folder
    out["open_clip_file"] = folder / "open_clip_model.safetensors"
    return out


# ---- SigLIP -------------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_siglip_features_equal_siglip_model(saved):
    from transformers import AutoImageProcessor, AutoTokenizer, SiglipModel

    ref = SiglipModel.from_pretrained(saved["siglip"]).eval()
    model = build_model(config("siglip", "mmbench.models.siglip:SiglipWrapper", saved["siglip"]))
    assert model.max_text_positions == 16 and model.preprocess_source.endswith("preprocessor_config.json")
    tokens = model.tokenize(TEXTS)
    # the processor's padding ("max_length", as SigLIP was trained) and no attention mask
    own = AutoTokenizer.from_pretrained(saved["siglip"])(
        TEXTS, padding="max_length", max_length=16, return_tensors="pt"
    )
    assert list(tokens) == ["input_ids"] and torch.equal(tokens["input_ids"], own["input_ids"])
    image = photo()
    ours = model.image_transform()(image)
    theirs = AutoImageProcessor.from_pretrained(saved["siglip"], backend="pil")(image, return_tensors="pt")
    torch.testing.assert_close(ours, theirs["pixel_values"][0], rtol=0, atol=1e-6)

    x = pixels(32)
    out = ref(input_ids=tokens["input_ids"], pixel_values=x)
    img, txt = model.image_embeddings(x), model.text_embeddings(**tokens)
    torch.testing.assert_close(img, out.image_embeds, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(txt, out.text_embeds, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.image_features(x), out.vision_model_output.pooler_output, rtol=1e-5, atol=1e-6)
    text_state = out.text_model_output.last_hidden_state[:, -1]
    torch.testing.assert_close(model.text_features(**tokens), text_state, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ref.text_model.head(model.text_features(**tokens)), out.text_model_output.pooler_output)
    # cosine ranks exactly as the sigmoid logits: logits = cos * exp(scale) + bias
    logits = (img @ txt.T) * ref.logit_scale.exp() + ref.logit_bias
    torch.testing.assert_close(logits, out.logits_per_image, rtol=1e-5, atol=1e-5)
    assert ref.logit_bias.abs() > 0.01 and (img @ txt.T).argsort(1).equal(out.logits_per_image.argsort(1))
    pair = model.pair_features(x, **tokens)
    assert pair.shape == (3, model.feature_dims["pair"]) == (3, 64)
    # any image size: the library's own interpolation
    big = ref.vision_model(pixel_values=pixels(48), interpolate_pos_encoding=True).pooler_output
    torch.testing.assert_close(model.image_features(pixels(48)), big, rtol=1e-5, atol=1e-6)


# ---- HF text encoders ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, positions", [("bert", 40), ("roberta", 40)])  # RoBERTa: 42 - (pad_token_id + 1)
@torch.no_grad()
def test_text_encoder_first_token_equals_auto_model(saved, family, positions):
    from transformers import AutoModel, AutoTokenizer

    ref = AutoModel.from_pretrained(saved[family]).eval()
    tok = AutoTokenizer.from_pretrained(saved[family])
    model = build_model(config(family, "mmbench.models.hf_encoders:HfTextEncoderWrapper", saved[family]))
    assert model.max_text_positions == positions
    tokens = model.tokenize(TEXTS, PAIRS)
    own = tok(TEXTS, PAIRS, padding=True, truncation=True, max_length=positions, return_tensors="pt")
    assert sorted(tokens) == sorted(k for k in own if k != "token_type_ids" or family == "bert")
    if family == "bert":  # the pair's second segment is segment 1
        assert tokens["token_type_ids"].sum() > 0
    assert torch.equal(tokens["input_ids"], own["input_ids"])
    hidden = ref(**tokens).last_hidden_state
    torch.testing.assert_close(model.text_features(**tokens), hidden[:, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model.text_features(**tokens), ref(**tokens).pooler_output)
    # never more tokens than the model has positions: a long text is cut to them and runs
    long = model.tokenize([" ".join(["red"] * 200)], max_length=500)
    assert long["input_ids"].shape[1] == positions and model.text_features(**long).shape == (1, 32)


# ---- HF vision encoders -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["vit", "dinov2"])
@torch.no_grad()
def test_vision_encoder_cls_equals_auto_model(saved, family):
    from transformers import AutoImageProcessor, AutoModel

    ref = AutoModel.from_pretrained(saved[family]).eval()
    model = build_model(config(family, "mmbench.models.hf_encoders:HfVisionEncoderWrapper", saved[family]))
    image = photo()
    theirs = AutoImageProcessor.from_pretrained(saved[family], backend="pil")(image, return_tensors="pt")
    torch.testing.assert_close(model.image_transform()(image), theirs["pixel_values"][0], rtol=0, atol=1e-6)
    p = model.preprocess
    expected = ("square", 32, 32, [0.5] * 3) if family == "vit" else ("shortest_edge", 40, 32, IMAGENET_MEAN)
    assert (p.resize_mode, p.resize, p.image_size) == expected[:3] and p.mean == pytest.approx(expected[3])

    x = pixels(32)
    out = ref(pixel_values=x)
    torch.testing.assert_close(model.image_features(x), out.last_hidden_state[:, 0], rtol=1e-5, atol=1e-6)
    if family == "dinov2":  # DINOv2's own pooler is exactly the layer-normed [CLS]
        torch.testing.assert_close(model.image_features(x), out.pooler_output, rtol=1e-5, atol=1e-6)
    else:  # ViT's pooler is an extra dense+tanh layer, not used
        assert not torch.allclose(model.image_features(x), out.pooler_output)
    kwargs = {"interpolate_pos_encoding": True} if family == "vit" else {}
    big = ref(pixel_values=pixels(48), **kwargs).last_hidden_state[:, 0]
    torch.testing.assert_close(model.image_features(pixels(48)), big, rtol=1e-5, atol=1e-6)
    transform = model.image_transform(image_size=48)
    assert transform(image).shape == (3, 48, 48)


# ---- timm ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, arch", [("timm_vit", TIMM_VIT), ("timm_cnn", TIMM_CNN)])
@torch.no_grad()
def test_timm_features_and_transform_equal_timm(saved, family, arch):
    import timm
    from timm.data import create_transform, resolve_data_config

    overlay = {**arch["pretrained_cfg_overlay"], "file": str(saved[family]), "custom_load": False}
    ref = timm.create_model(
        arch["model_name"], pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay, **arch.get("kwargs", {})
    ).eval()
    model = build_model(config(family, "mmbench.models.timm_model:TimmWrapper", saved[family], arch=arch))
    assert model.feature_dims["image"] == ref.num_features
    image = photo()
    expected = create_transform(**resolve_data_config(model=ref), is_training=False)(image)
    torch.testing.assert_close(model.image_transform()(image), expected, rtol=0, atol=0)
    p = model.preprocess  # timm's data config, recorded: crop_pct 0.95 -> resize floor(32 / 0.95)
    assert (p.image_size, p.resize, p.interpolation) == (32, 33, ref.pretrained_cfg["interpolation"])
    assert "crop_pct" in model.preprocess_source
    x = pixels(32)
    torch.testing.assert_close(model.image_features(x), ref(x), rtol=1e-5, atol=1e-6)
    # another size: timm's transform with the input size replaced, and the model runs at it
    big = model.image_transform(image_size=48)(image)
    assert big.shape == (3, 48, 48)
    assert model.image_features(big[None]).shape == (1, ref.num_features)


def test_timm_spec_and_errors(saved):
    from mmbench.models.timm_model import resolve_spec

    spec = resolve_spec("timm:vit_base_patch16_224.augreg_in21k")
    assert spec["arch"] == {"model_name": "vit_base_patch16_224.augreg_in21k"} and spec["checkpoint"] is None
    assert spec["wrapper"] == "mmbench.models.timm_model:TimmWrapper"
    with pytest.raises(ConfigError, match="unknown timm model 'vit_bsae_patch16_224'.*did you mean"):
        resolve_spec("timm:vit_bsae_patch16_224")
    cfg = config("t", "mmbench.models.timm_model:TimmWrapper", saved["timm_cnn"], arch=TIMM_CNN)
    cfg.preprocess.image_size = 64
    with pytest.raises(ConfigError, match="key 'preprocess': timm models use timm's data config"):
        build_model(cfg)


# ---- open_clip ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["folder", "file"])
@torch.no_grad()
def test_open_clip_features_equal_open_clip(saved, source):
    import open_clip

    ref, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{saved['open_clip']}")
    ref.eval()
    if source == "folder":  # open_clip's own layout: the config (with its preprocess_cfg) beside the weights
        cfg = config("oc", "mmbench.models.open_clip_model:OpenClipWrapper", saved["open_clip"])
    else:  # a state-dict file and the architecture inline
        arch = {"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}}
        cfg = config("oc", "mmbench.models.open_clip_model:OpenClipWrapper", saved["open_clip_file"], arch=arch)
    model = build_model(cfg)
    assert model.max_text_positions == 77 and model.preprocess.mean == pytest.approx(IMAGENET_MEAN)
    image = photo()
    torch.testing.assert_close(model.image_transform()(image), preprocess(image), rtol=0, atol=0)
    tokens = model.tokenize(TEXTS)
    assert torch.equal(tokens["input_ids"], open_clip.get_tokenizer(f"local-dir:{saved['open_clip']}")(TEXTS))
    x = pixels(32)
    torch.testing.assert_close(model.image_embeddings(x), ref.encode_image(x, normalize=True), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.image_features(x), ref.encode_image(x), rtol=1e-5, atol=1e-6)
    ids = tokens["input_ids"]
    torch.testing.assert_close(
        model.text_embeddings(**tokens), ref.encode_text(ids, normalize=True), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(model.text_features(**tokens), ref.encode_text(ids), rtol=1e-5, atol=1e-6)
    # another size equals open_clip's own model at that size, whose position table its loader resized
    big = open_clip.create_model(f"local-dir:{saved['open_clip']}", force_image_size=48).eval()
    torch.testing.assert_close(model.image_features(pixels(48)), big.encode_image(pixels(48)), rtol=1e-5, atol=1e-6)
    assert model.image_transform(image_size=48)(image).shape == (3, 48, 48)


def test_open_clip_spec_names_tags():
    from mmbench.models.open_clip_model import resolve_spec

    spec = resolve_spec("open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert spec["arch"] == {"model_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    with pytest.raises(ConfigError, match="which pretrained weights\\? name one of its tags: .*laion2b_s34b_b79k"):
        resolve_spec("open_clip:ViT-B-32")
    with pytest.raises(ConfigError, match="has no pretrained tag 'nope'"):
        resolve_spec("open_clip:ViT-B-32/nope")


# ---- random init (tiny presets of each family) -------------------------------------------------------------------
RANDOM = {
    "siglip": (
        "mmbench.models.siglip:SiglipWrapper",
        {"vision": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 8},
         "text": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16}},
        "mmbench:tiny-sentencepiece",
    ),
    "bert": (
        "mmbench.models.hf_encoders:HfTextEncoderWrapper",
        {"model_type": "bert", "config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}},
        "mmbench:tiny-wordpiece",
    ),
    "vit": (
        "mmbench.models.hf_encoders:HfVisionEncoderWrapper",
        {"model_type": "vit", "config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}},
        None,
    ),
    "timm": ("mmbench.models.timm_model:TimmWrapper", TIMM_VIT, None),
    "open_clip": ("mmbench.models.open_clip_model:OpenClipWrapper", {"model_cfg": OPEN_CLIP_CFG}, None),
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(RANDOM))
@torch.no_grad()
def test_random_init_is_seeded_and_runs(family):
    wrapper, arch, tokenizer = RANDOM[family]
    kw = {"arch": arch, "tokenizer": tokenizer, "random_init": True}
    if family in ("siglip", "vit"):
        kw["preprocess"] = PreprocessConfig(image_size=32, resize=32)
    a, b = (build_model(config(family, wrapper, None, **kw)) for _ in range(2))
    c = build_model(config(family, wrapper, None, init_seed=1, **kw))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, r) for p, r in zip(a.state_dict().values(), c.state_dict().values()))
    if Capability.IMAGE in a.capabilities:
        assert a.image_features(pixels(32)).shape == (3, a.feature_dims["image"])
    if Capability.TEXT in a.capabilities:
        assert a.text_features(**a.tokenize(TEXTS)).shape == (3, a.feature_dims["text"])


# ---- capabilities -------------------------------------------------------------------------------------------------
def test_capabilities_per_class_and_the_missing_ones_raise(saved):
    from mmbench.models.hf_encoders import HfTextEncoderWrapper, HfVisionEncoderWrapper
    from mmbench.models.open_clip_model import OpenClipWrapper
    from mmbench.models.siglip import SiglipWrapper
    from mmbench.models.timm_model import TimmWrapper

    both = Capability.IMAGE | Capability.TEXT | Capability.FUSION | Capability.CONTRASTIVE
    assert SiglipWrapper.capabilities == OpenClipWrapper.capabilities == both
    assert HfTextEncoderWrapper.capabilities == Capability.TEXT
    assert HfVisionEncoderWrapper.capabilities == TimmWrapper.capabilities == Capability.IMAGE
    text = build_model(config("bert", "mmbench.models.hf_encoders:HfTextEncoderWrapper", saved["bert"]))
    vision = build_model(config("vit", "mmbench.models.hf_encoders:HfVisionEncoderWrapper", saved["vit"]))
    with pytest.raises(CapabilityError, match="model 'bert' has no IMAGE capability, which linear probe needs"):
        text.require(Capability.IMAGE, "linear probe")
    with pytest.raises(CapabilityError, match="model 'vit' has no TEXT/CONTRASTIVE capability, which retrieval"):
        vision.require(Capability.TEXT | Capability.CONTRASTIVE, "retrieval")
    with pytest.raises(CapabilityError, match="no CONTRASTIVE capability"):
        vision.image_embeddings(pixels(32))
    # a checkpoint of another family is one line naming its config class and what is supported
    with pytest.raises(ConfigError, match="has a ViTConfig: 'vit' is not supported by HfTextEncoderWrapper"):
        build_model(config("x", "mmbench.models.hf_encoders:HfTextEncoderWrapper", saved["vit"]))


def test_library_versions_and_sources_are_in_the_weights_fingerprint(saved, monkeypatch):
    from mmbench.models import fingerprint

    cfg = config("t", "mmbench.models.timm_model:TimmWrapper", saved["timm_cnn"], arch=TIMM_CNN)
    random = config("t", "mmbench.models.timm_model:TimmWrapper", None, arch=TIMM_CNN, random_init=True)
    before = fingerprint.weights_fingerprint(cfg), fingerprint.weights_fingerprint(random)
    assert None not in before and before[0] != before[1]
    versions = {"timm": "0.0-other"}
    monkeypatch.setattr(fingerprint, "_version", lambda lib: versions.get(lib, "same"))
    after = fingerprint.weights_fingerprint(cfg), fingerprint.weights_fingerprint(random)
    versions["timm"] = "0.0-again"
    assert after[0] != fingerprint.weights_fingerprint(cfg) and after[1] != fingerprint.weights_fingerprint(random)
    # timm's own weights that are not in the hub cache: unknown until built, so no cache entry may be used
    pretrained = config("t", "mmbench.models.timm_model:TimmWrapper", None, arch={"model_name": "resnet18.a1_in1k"})
    assert fingerprint.weights_fingerprint(pretrained) is None


# ---- end to end, through the specs a user types: --model hf:<dir> | timm:<name> | open_clip:<folder> ----------
SHORT_RTE = [f"task.data.synthetic.finetune.{k}" for k in ("max_steps=6", "warmup_steps=1", "val_every_steps=3")]


def _spec(saved: dict[str, Path], family: str) -> tuple[str, list[str]]:
    """The spec and `--set` items that run the tiny saved model of `family`."""
    if family == "timm":  # timm's own name; the weights file and tiny size as overrides, as a user would
        overlay = "model.arch.pretrained_cfg_overlay.input_size=[3,32,32]"
        return "timm:test_vit", [f"model.checkpoint={saved['timm_vit']}", "model.arch.kwargs.img_size=32", overlay]
    if family == "open_clip":
        return f"open_clip:{saved['open_clip']}", []
    return f"hf:{saved[family]}", []


@pytest.mark.parametrize(
    "family, task, wrapper",
    [
        ("dinov2", "cifar10", "HfVisionEncoderWrapper"),
        ("timm", "cifar10", "TimmWrapper"),
        ("siglip", "flickr30k", "SiglipWrapper"),
        ("open_clip", "flickr30k", "OpenClipWrapper"),
        ("bert", "rte", "HfTextEncoderWrapper"),
    ],
)
def test_each_family_runs_a_task_through_its_spec(saved, tmp_path, family, task, wrapper):
    """Linear probe for the image families, retrieval for the contrastive ones, GLUE for the text encoder."""
    from mmbench import evaluate

    spec, extra = _spec(saved, family)
    limit = 40 if task != "rte" else 24
    (result,) = evaluate(
        spec, task, data="synthetic", limit=limit, output=tmp_path / "out", cache_dir=tmp_path / "cache",
        overrides=extra + (SHORT_RTE if task == "rte" else []), progress=False, num_workers=0,
    )  # fmt: skip
    assert result.status == "ok" and result.data_source == "synthetic", result
    assert result.model == spec and result.config["model"]["wrapper"].endswith(f":{wrapper}")
    expected = {"cifar10": "top1", "flickr30k": "tr_r1", "rte": "accuracy"}[task]
    assert result.primary == expected and 0 <= result.metrics[expected] <= 1 and result.n_samples > 0
    assert (tmp_path / "out" / "runs").is_dir() and len(list((tmp_path / "out" / "runs").glob("*/*.json"))) == 1


def test_open_clip_missing_is_one_line_naming_the_install(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # `import open_clip` raises ImportError
    cfg = config("oc", "mmbench.models.open_clip_model:OpenClipWrapper", saved["open_clip"])
    with pytest.raises(ConfigError, match=r"^open_clip models need the optional extra: pip install open_clip_torch"):
        build_model(cfg)
