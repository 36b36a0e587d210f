"""The IDEFICS wrapper against Hugging Face's own IDEFICS path, on the tiny preset with every parameter randomised.

The reference is what a transformers user runs: `IdeficsProcessor` (the tiny tokenizer + `IdeficsImageProcessor`)
on the prompt as a list of text parts and PIL images, then `IdeficsForVisionText2Text.generate` or its forward.
Prompts are the contract's (OpenFlamingo's spelling, `<image>` and `<|endofchunk|>`); the processor gets the same
text parts with `<|endofchunk|>` written as the preset's end-of-chunk text ("\\n"). Each check prints its figure
(`pytest -rP`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import randomize_
from PIL import Image

from mmbench.config import parse_overrides
from mmbench.errors import CheckpointError, ConfigError
from mmbench.models import build_model
from mmbench.models.base import CHUNK_END_MARKER, MEDIA_MARKER
from mmbench.models.idefics import image_attention_mask
from mmbench.models.preprocess import PROCESSOR_FILE, from_processor_config

# A batch that needs left padding: several images (two in a row), text-only demonstrations before the one image,
# a captioning prompt, and spaces around text parts (the processor strips them).
PROMPTS = [
    "<image>Question:what colour is the circle? Short answer:red<|endofchunk|><image><image>Question:how many stars"
    " are there? Short answer:two<|endofchunk|><image>Question:what shape is it? Short answer:",
    "Question:is it a dog? Short answer:yes<|endofchunk|>Question:what is left of the tree? Short answer:a car"
    "<|endofchunk|><image>Question:what colour is the sky? Short answer:",
    "<image>Output:a small red square<|endofchunk|><image>Output:",
    "<image> Question:is the ball big? Short answer: yes <|endofchunk|><image>Question:is it a cat? Short answer:",
]
CONTINUATIONS = [" red", " blue circle", " yes", " two small stars"]
NEWLINE = "<0x0A>"  # "\n" in a LLaMA vocabulary: its byte-fallback token
STEER = "<0x4B>"  # the newline is made to win where this token would (see `tiny_wrapper`)
# idefics-9b's preprocessor_config.json, as the hub repo holds it.
IDEFICS_PROCESSOR = {
    "image_num_channels": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "IdeficsImageProcessor",
    "image_size": 224,
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "IdeficsProcessor",
}
GREY_LEVEL = 1 / 255 / min(IDEFICS_PROCESSOR["image_std"])  # one uint8 step after normalisation


def textured(width: int, height: int) -> Image.Image:
    """Noise over gradients: a one-pixel shift or another filter shows at once."""
    rng = np.random.default_rng(width * 1000 + height)
    y, x = np.mgrid[0:height, 0:width]
    gradients = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
    noise = rng.integers(0, 256, (height, width, 3))
    return Image.fromarray((0.5 * noise + 0.5 * gradients).astype(np.uint8))


def processor_items(prompt: str, images: list[Image.Image]) -> list:
    """The prompt as `IdeficsProcessor` takes it: its text parts and images in order, empty parts left out."""
    parts = prompt.replace(CHUNK_END_MARKER, "\n").split(MEDIA_MARKER)
    items: list = []
    for i, part in enumerate(parts):
        if i > 0:
            items.append(images[i - 1])
        if part:
            items.append(part)
    return items


def tiny_wrapper(registry, overrides: list[str] | None = None):
    """idefics-tiny with every parameter randomised, and the newline (the chunk end) made the top token wherever
    `STEER` would be, so that some rows stop early and others run to the end."""
    model = build_model(registry.model("idefics-tiny", parse_overrides(overrides or [])["model"]))
    randomize_(model, seed=3).eval()
    tok = model.tokenizer
    with torch.no_grad():
        head = model.model.lm_head.weight  # (V, D), the base vocabulary's rows
        head[tok.convert_tokens_to_ids(NEWLINE)] = 1.25 * head[tok.convert_tokens_to_ids(STEER)]
    return model


@pytest.fixture(scope="module")
def tiny(registry):
    return tiny_wrapper(registry)


@pytest.fixture(scope="module")
def processor(tiny):
    from transformers import IdeficsImageProcessorPil, IdeficsProcessor

    return IdeficsProcessor(IdeficsImageProcessorPil(image_size=32), tiny.tokenizer)


@pytest.fixture(scope="module")
def batch(processor):
    """(PIL images per prompt, the processor's batch, the processor's pixels per prompt for the wrapper)."""
    sizes = iter([(45, 37), (37, 45), (64, 29), (50, 50), (33, 71), (40, 31), (29, 64), (71, 33), (45, 45)])
    pil = [[textured(*next(sizes)) for _ in range(p.count(MEDIA_MARKER))] for p in PROMPTS]
    ref = processor(text=[processor_items(p, imgs) for p, imgs in zip(PROMPTS, pil)], return_tensors="pt")
    images = [ref["pixel_values"][i, : len(imgs)] for i, imgs in enumerate(pil)]
    return pil, ref, images


def test_tiny_idefics_tokenizer_is_llama_shaped():
    """Words are single `▁word` tokens, anything else is spelt out (bytes where it is not ASCII), nothing maps to
    `<unk>`, and the two image tokens follow the base vocabulary, as in idefics-9b."""
    from mmbench.models.tokenizers import TINY_WORDS, tiny_idefics

    tok = tiny_idefics()
    for word in TINY_WORDS:
        assert tok.convert_ids_to_tokens(tok(word, add_special_tokens=False)["input_ids"]) == ["▁" + word], word
    text = "Question:xylophone über quartz? Short answer:red\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids and ids[-1] == tok.convert_tokens_to_ids(NEWLINE)
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_tokens_to_ids(["<fake_token_around_image>", "<image>"]) == [tok.vocab_size, tok.vocab_size + 1]
    assert len(tok) == tok.vocab_size + 2 and tok.pad_token == "<unk>" and tok.padding_side == "left"


def test_prompts_translate_as_the_processor_builds_them(tiny, batch):
    _, ref, images = batch
    enc = tiny.encode(images, PROMPTS)
    tok = tiny.tokenizer
    assert (ref["attention_mask"] == 0).any(), "the batch must need padding"
    assert tok.padding_side == "left" and (ref["attention_mask"][:, -1] == 1).all()
    for key in ("input_ids", "attention_mask", "pixel_values", "image_attention_mask"):
        assert torch.equal(getattr(enc, key), ref[key]), key
    # What the translation is, spelled out once: BOS, consecutive images sharing a fake token, "\n" chunk ends,
    # spaces stripped around text parts.
    assert tiny.idefics_text(PROMPTS[0]).startswith(
        "<s><fake_token_around_image><image><fake_token_around_image>Question:what colour"
    )
    assert "red\n<fake_token_around_image><image><fake_token_around_image><image><fake_token_around_image>" in (
        tiny.idefics_text(PROMPTS[0])
    )
    assert "<fake_token_around_image>Question:is the ball big? Short answer: yes \n<fake" in tiny.idefics_text(
        PROMPTS[3]
    )


def test_image_attention_mask_equals_the_processors_on_packed_sequences(tiny):
    """The processor's rule where prompts never go: EOS cutting tokens off their image, more images than slots."""
    from transformers.models.idefics.processing_idefics import (
        image_attention_mask_for_packed_input_ids,
        incremental_to_binary_attention_mask,
    )

    tok = tiny.tokenizer
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (6, 40), generator=gen)  # (B, T) ordinary tokens
    specials = torch.tensor([tiny.image_token_id, tok.eos_token_id])
    where = torch.rand(ids.shape, generator=gen) < 0.2
    ids[where] = specials[torch.randint(0, 2, (int(where.sum()),), generator=gen)]
    assert (ids == tok.eos_token_id).any() and (ids == tiny.image_token_id).sum(-1).max() > 3
    for n in (1, 3, int((ids == tiny.image_token_id).sum(-1).max())):
        incremental, _ = image_attention_mask_for_packed_input_ids(ids.clone(), tok, "pt")
        expected = incremental_to_binary_attention_mask(incremental, "pt", num_classes=n)
        assert torch.equal(image_attention_mask(ids, tiny.image_token_id, tok.eos_token_id, n), expected), n


def reference_generate(tiny, ref, **decoding):
    """HF's own path: `model.generate` on the processor's batch; new ids up to the first stop token."""
    tok = tiny.tokenizer
    stops = [tok.convert_tokens_to_ids(NEWLINE), tok.eos_token_id]
    with torch.no_grad():
        out = tiny.model.generate(**ref, do_sample=False, eos_token_id=stops, pad_token_id=tok.pad_token_id, **decoding)
    rows = out[:, ref["input_ids"].shape[1] :].tolist()
    return [row[: next((i for i, t in enumerate(row) if t in stops), len(row))] for row in rows]


def test_greedy_generate_equals_the_processor_and_hf_generate(tiny, batch):
    _, ref, images = batch
    theirs = reference_generate(tiny, ref, max_new_tokens=8)
    ours = tiny.generate_tokens(images, PROMPTS, max_new_tokens=8)
    print(f"parity greedy: {ours}")
    assert ours == theirs
    assert tiny.generate(images, PROMPTS, max_new_tokens=8) == [tiny.tokenizer.decode(r) for r in theirs]
    # Non-trivial: some rows stop at the chunk end early, others run to max_new_tokens.
    lengths = [len(r) for r in ours]
    assert min(lengths) < 8 and max(lengths) == 8 and len(set(lengths)) >= 3, lengths
    # Clear margins: every step's top token beats the runner-up by far more than float rounding.
    with torch.no_grad():
        out = tiny.model.generate(
            **ref, max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    top2 = torch.stack(out.scores, 1).topk(2, dim=-1).values  # (B, steps, 2)
    margins = [(top2[i, : len(r) + 1, 0] - top2[i, : len(r) + 1, 1]).min().item() for i, r in enumerate(ours)]
    print(f"parity greedy: smallest top-1 margin {min(margins):.3g}")
    assert min(margins) > 1e-4


@pytest.mark.parametrize("min_new_tokens, length_penalty", [(2, 0.5), (0, 2.0)])
def test_beam_generate_equals_the_processor_and_hf_generate(tiny, batch, min_new_tokens, length_penalty):
    _, ref, images = batch
    decoding = {"max_new_tokens": 7, "num_beams": 3, "min_new_tokens": min_new_tokens, "length_penalty": length_penalty}
    theirs = reference_generate(tiny, ref, early_stopping=False, **decoding)
    ours = tiny.generate_tokens(images, PROMPTS, **decoding)
    print(f"parity beams=3 min_new_tokens={min_new_tokens} length_penalty={length_penalty}: {ours}")
    assert ours == theirs
    lengths = [len(r) for r in ours]
    assert min(lengths) >= min_new_tokens and len(set(lengths)) >= 2, lengths


def test_beam_search_runs_the_vision_tower_once_per_image(tiny, batch):
    """With pixels, HF's generate repeats them per beam before the tower: 3x its work at 3 beams (the rehearsal's
    IDEFICS VQA rows cost 6-7x their log-likelihood ones); the wrapper hands it each image's states once."""
    _, _, images = batch
    seen: list[int] = []
    hook = tiny.model.model.vision_model.register_forward_hook(lambda m, args, kw, out: seen.append(
        out.last_hidden_state.shape[0]), with_kwargs=True)  # fmt: skip
    try:
        tiny.generate_tokens(images, PROMPTS, max_new_tokens=3, num_beams=3)
    finally:
        hook.remove()
    assert seen == [len(PROMPTS) * max(len(im) for im in images)]  # one pass, B x N (padded) images, no beam copies


def test_loglikelihood_equals_a_plain_forward_per_prompt_and_continuation(tiny, processor, batch):
    pil, _, images = batch
    tok = tiny.tokenizer
    sums = tiny.loglikelihood(images, PROMPTS, CONTINUATIONS)
    means = tiny.loglikelihood(images, PROMPTS, CONTINUATIONS, normalize_length=True)
    assert sums.shape == means.shape == (len(PROMPTS), len(CONTINUATIONS))
    worst = 0.0
    for i, (prompt, imgs) in enumerate(zip(PROMPTS, pil)):
        prompt_ids = processor(text=[processor_items(prompt, imgs)], return_tensors="pt")["input_ids"][0].tolist()
        for j, cont in enumerate(CONTINUATIONS):
            cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
            # One processor call on prompt + continuation, no padding, no cache: the same tokens as the prompt's
            # followed by the continuation's own.
            inputs = processor(text=[processor_items(prompt + cont, imgs)], return_tensors="pt")
            assert inputs["input_ids"][0].tolist() == prompt_ids + cont_ids, (i, j)
            with torch.no_grad():
                logits = tiny.model(**inputs).logits[0]  # (T, V)
            logp = logits.log_softmax(-1)[len(prompt_ids) - 1 : -1]  # (Lc, V): the scores of each continuation token
            scores = logp.gather(-1, torch.tensor(cont_ids)[:, None]).squeeze(-1)  # (Lc,)
            for ours, theirs in ((sums[i, j], scores.sum()), (means[i, j], scores.mean())):
                worst = max(worst, abs(ours.item() - theirs.item()))
    print(f"parity loglikelihood: max |diff| = {worst:.3g} (sums {sums.min():.2f}..{sums.max():.2f})")
    assert worst <= 1e-5
    assert sums.std(dim=0).min() > 1e-3, "the images and prompts must move the scores"


def test_image_transform_equals_idefics_image_processor(tiny):
    """Square bicubic resize, no crop, CLIP mean/std: PIL backend bit for bit, torchvision backend within the
    grey level its antialiased resize approximates PIL by (as for CLIP/FLAVA in tests/test_preprocess_parity.py)."""
    from transformers import IdeficsImageProcessor, IdeficsImageProcessorPil

    for size in (32, 224):
        transform = tiny.image_transform(image_size=None if size == 32 else size)
        pil, tv = IdeficsImageProcessorPil(image_size=size), IdeficsImageProcessor(image_size=size)
        for w, h in [(45, 37), (37, 45), (640, 427), (427, 640), (301, 301)]:
            image = textured(w, h)
            ours = transform(image)
            assert ours.shape == (3, size, size)
            diff = (ours - pil(image, return_tensors="pt")[0]).abs().max().item()
            print(f"parity IdeficsImageProcessor (PIL backend) {w}x{h} at {size}: max |diff| = {diff:.3g}")
            assert diff <= 1e-6
            delta = (ours - tv(image, return_tensors="pt")[0]).abs()
            print(f"parity IdeficsImageProcessor (torchvision) {w}x{h} at {size}: max |diff| = {delta.max():.3g}")
            assert delta.max() <= 10 * GREY_LEVEL and delta.mean() <= 0.5 * GREY_LEVEL


def test_the_presets_state_what_idefics_9b_processor_config_says(registry, tmp_path):
    (tmp_path / PROCESSOR_FILE).write_text(json.dumps(IDEFICS_PROCESSOR))
    preset = registry.model("idefics").preprocess
    assert from_processor_config(tmp_path / PROCESSOR_FILE, preset) == preset
    assert preset.resize_mode == "square" and preset.image_size == preset.resize == 224
    tiny = registry.model("idefics-tiny").preprocess
    assert (tiny.resize_mode, tiny.interpolation, tiny.mean, tiny.std) == (
        preset.resize_mode,
        preset.interpolation,
        preset.mean,
        preset.std,
    )


def test_a_saved_checkpoint_loads_through_a_preset_and_gives_the_same_outputs(
    registry, tiny, processor, batch, tmp_path
):
    _, _, images = batch
    tiny.model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)  # the tokenizer, and transformers 5's processor_config.json
    # transformers 5 nests the image processor in processor_config.json (idefics-9b's hub repo has the older
    # preprocessor_config.json); models/preprocess.py reads either, the nested one first as transformers does.
    assert not (tmp_path / PROCESSOR_FILE).exists()
    items = [f"model.checkpoint={tmp_path}", "model.random_init=false", "model.tokenizer=null"]
    loaded = build_model(registry.model("idefics-tiny", parse_overrides(items)["model"]))
    assert loaded.preprocess_source == str(tmp_path / "processor_config.json")
    assert loaded.preprocess == tiny.preprocess
    assert (
        type(loaded.tokenizer).__name__ == "LlamaTokenizer"
        and loaded.tokenizer.get_vocab() == tiny.tokenizer.get_vocab()
    )
    assert loaded.tokenizer("a red circle")["input_ids"] == tiny.tokenizer("a red circle")["input_ids"]  # BOS too
    for decoding in ({}, {"num_beams": 3, "min_new_tokens": 2}):
        a = tiny.generate(images, PROMPTS, max_new_tokens=6, **decoding)
        assert loaded.generate(images, PROMPTS, max_new_tokens=6, **decoding) == a
    torch.testing.assert_close(
        loaded.loglikelihood(images, PROMPTS, CONTINUATIONS), tiny.loglikelihood(images, PROMPTS, CONTINUATIONS)
    )


def test_a_prompt_longer_than_the_context_is_a_config_error_naming_the_lengths(tiny):
    demo = "<image>Question:what colour is it? Short answer:red<|endofchunk|>"
    long_prompt = demo * 100 + "<image>Output:"
    images = [torch.zeros(1, 3, 32, 32), torch.zeros(101, 3, 32, 32)]
    prompts = ["<image>Output:", long_prompt]
    n = len(tiny.tokenizer(tiny.idefics_text(long_prompt), add_special_tokens=False)["input_ids"])
    assert 1500 < n < 2048, n
    too_many = 2048 - n + 1
    with pytest.raises(
        ConfigError, match=rf"prompt 1 is {n} tokens, and with max_new_tokens \({too_many}\) that is 2049, "
    ):
        tiny.generate(images, prompts, max_new_tokens=too_many)
    with pytest.raises(ConfigError, match=rf"prompt 1 is {n} tokens, and with the longest continuation"):
        tiny.loglikelihood(images, prompts, [" red", " red" * too_many])
    assert len(tiny.generate(images, prompts, max_new_tokens=too_many - 1)) == 2  # what fits runs


def test_an_end_of_chunk_text_of_several_tokens_is_a_config_error(registry):
    with pytest.raises(ConfigError, match=r"'arch.end_of_chunk_token': 'red square' is not a single token"):
        build_model(
            registry.model("idefics-tiny", parse_overrides(["model.arch.end_of_chunk_token=red square"])["model"])
        )


def test_images_must_match_the_media_markers(tiny):
    with pytest.raises(ValueError, match=r"prompt 0 has 2 <image> but 1 images"):
        tiny.generate([torch.zeros(1, 3, 32, 32)], ["<image><image>Output:"], max_new_tokens=2)


def test_the_real_preset_offline_is_one_clear_line(registry):
    cfg = registry.model("idefics", parse_overrides(["model.checkpoint=nobody/not-a-real-idefics"])["model"])
    with pytest.raises(CheckpointError) as err:
        build_model(cfg)
    msg = str(err.value)
    assert "nobody/not-a-real-idefics" in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg
