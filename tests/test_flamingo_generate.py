"""GENERATE on the Flamingo wrapper: generation and continuation log-likelihoods over interleaved prompts.

Proven two ways on flamingo-tiny with every parameter randomised: against open-flamingo 2.0.1 (its own
`Flamingo.generate` driven as its `EvalModel` drives it; log-likelihoods from its plain forward on each sequence
alone), and against our own uncached forward (a plain argmax loop; per-sample scoring), which shows that the KV
cache, the left padding and the cached-media rule are right. Each check prints its max |difference| or its smallest
decision margin (`pytest -rP` shows them).

Near-ties: a generated token is only as stable as the gap between the candidates it was picked from, so every
generation check asserts that the reference's decisions (top-2 gap of each greedy step; gaps among the candidates
beam search ranks, and between its two best finished beams) are at least `MARGIN`, 10 times the parity tolerance
that the scores behind them are held to: rounding on another CPU cannot flip them.
"""

from __future__ import annotations

import pytest
import torch
from flamingo_reference import REF, REPO, TOL, WHY, randn, record, reference_flamingo, tiny_flamingo, tiny_pair
from torch import nn

from mmbench.config import Registry
from mmbench.errors import ConfigError
from mmbench.models import build_model
from mmbench.models.base import Capability, parse_arch
from mmbench.models.flamingo import FlamingoArch, FlamingoWrapper
from mmbench.models.flamingo_generate import generate_ids

MARGIN = 10 * TOL

# A left-padded batch of prompts of different lengths: interleaved demonstrations ending in `<|endofchunk|>`, several
# images per prompt, and a 0-shot style prompt (text-only demonstrations, one image for the query).
PROMPTS = [
    "<image> a red circle<|endofchunk|><image> two blue squares<|endofchunk|><image> the",
    "<image> cat<|endofchunk|><image> a",
    "a red circle<|endofchunk|>two blue squares<|endofchunk|><image> a",
    "<image> three green triangles on the right<|endofchunk|><image> two",
]
IMAGES = [randn(n, 3, 32, 32, seed=i) for i, n in enumerate([3, 2, 1, 2], start=1)]  # (T_i, C, H, W)
CONTINUATIONS = [" yes", " a red circle", " two blue squares on the left of"]
EOC = "<|endofchunk|>"


def generation_model(boost: str) -> FlamingoWrapper:
    """flamingo-tiny randomised with a spread (std 2) at which greedy outputs vary with the images. Random weights
    rarely emit special tokens, so the LM-head row of `boost` is scaled: `<|endofchunk|>` makes some rows stop
    early, `<image>` makes decode steps emit media tokens."""
    ours = tiny_flamingo(seed=3, std=2.0)
    row = ours.tokenizer.convert_tokens_to_ids(boost)
    with torch.no_grad():
        ours.model.lang_encoder.get_output_embeddings().weight[row] *= {EOC: 5.0, "<image>": 3.0}[boost]
    return ours


def generation_pair(boost: str) -> tuple[FlamingoWrapper, nn.Module]:
    """`generation_model` and the reference at equal weights."""
    ours = generation_model(boost)
    return ours, reference_flamingo(
        ours.model, parse_arch(ours.cfg, FlamingoArch), ours.tokenizer.convert_tokens_to_ids(EOC)
    )


def reference_inputs(ours: FlamingoWrapper) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What OpenFlamingo's EvalModel hands `Flamingo.generate`: left-padded ids and mask, zero-padded images
    (B, T_img, F=1, C, H, W)."""
    enc = ours.tokenizer(PROMPTS, padding="longest", padding_side="left", return_tensors="pt")
    px = torch.zeros(len(IMAGES), max(len(i) for i in IMAGES), 1, 3, 32, 32)
    for i, imgs in enumerate(IMAGES):
        px[i, : len(imgs), 0] = imgs
    return enc["input_ids"], enc["attention_mask"], px


def running(new_ids: torch.Tensor, eoc: int) -> torch.Tensor:
    """(B, N) bool: the steps at which each row had not yet emitted `eoc` (its own step included)."""
    stopped = (new_ids == eoc).long().cumsum(dim=1)  # (B, N)
    return (stopped - (new_ids == eoc).long()) == 0


def record_candidates(lm: nn.Module, steps: list[torch.Tensor]) -> None:
    """Make beam search on `lm` append, at every step, the top (2*beams + 1) accumulated scores it ranks: the
    candidates whose order decides which beams run on and which finish."""

    def top_k_continuations(accumulated_log_probs, **kwargs):
        steps.append(accumulated_log_probs.topk(kwargs["beams_to_keep"] + 1, dim=-1).values)  # (B, 2k+1)
        return type(lm)._get_top_k_continuations(lm, accumulated_log_probs=accumulated_log_probs, **kwargs)

    lm._get_top_k_continuations = top_k_continuations


def reference_generate(theirs: nn.Module, ours: FlamingoWrapper, **decoding) -> tuple[torch.Tensor, float, list]:
    """The reference's new tokens (B, N), its smallest decision margin and (beam search) its ranked candidates."""
    ids, mask, px = reference_inputs(ours)
    beams, steps, gaps = decoding.get("num_beams", 1), [], []
    if beams > 1:
        record_candidates(theirs.lang_encoder, steps)
    out = theirs.generate(px, ids, mask, return_dict_in_generate=True, output_scores=True, **decoding)
    new = out.sequences[:, ids.shape[1] :]
    if beams == 1:
        scores = torch.stack(out.scores, dim=1)  # (B, N, V) processed scores, argmax picks from them
        top = scores.topk(2, dim=-1).values  # (B, N, 2)
        gaps.append((top[..., 0] - top[..., 1])[running(new, ours.tokenizer.convert_tokens_to_ids(EOC))].min())
    else:
        del theirs.lang_encoder._get_top_k_continuations
        for top in steps:
            live = top[:, 1:] > -1e8  # unreachable candidates (-inf, HF's -1e9 start) are not decisions
            gaps.append((top[:, :-1] - top[:, 1:])[live].min())
        # and the choice between the two best finished beams
        every = theirs.generate(px, ids, mask, return_dict_in_generate=True, output_scores=True,
                                num_return_sequences=beams, **decoding)  # fmt: skip
        final = every.sequences_scores.view(len(PROMPTS), beams)  # best first
        gaps.append((final[:, 0] - final[:, 1]).min())
    return new, float(torch.stack(gaps).min()), steps


def ours_generate(ours: FlamingoWrapper, **decoding) -> tuple[torch.Tensor, list]:
    """Our new tokens (B, N) and (beam search) the candidates our search ranked at each step."""
    steps = []
    record_candidates(ours.model.lang_encoder, steps)
    try:
        return generate_ids(ours, IMAGES, PROMPTS, **decoding), steps
    finally:
        del ours.model.lang_encoder._get_top_k_continuations


def check_decisions(what: str, margin: float, ours_steps: list, ref_steps: list) -> None:
    """Every decision the reference took is at least MARGIN apart, and (beam search) the scores it ranked agree with
    ours within TOL at every step: rounding elsewhere cannot flip a token."""
    print(f"generate ({what}): smallest decision margin in the reference {margin:.3g}")
    assert margin >= MARGIN
    assert len(ours_steps) == len(ref_steps)
    if ref_steps:
        a, b = torch.stack(ours_steps), torch.stack(ref_steps)  # (N, B, 2k+1)
        live = b > -1e8
        assert torch.equal(live, a > -1e8)
        record(f"{what}: ranked beam candidates", a[live], b[live])


def assert_nontrivial(new: torch.Tensor, eoc: int, max_new_tokens: int) -> None:
    """Some rows stop early and at different steps, some run to the end: a stop rule or padding bug shows."""
    lengths = running(new, eoc).sum(dim=1)  # (B,) tokens up to and with each row's eoc
    stopped = [int(n) for n, row in zip(lengths, new) if (row == eoc).any()]
    assert len(set(stopped)) >= 2 and (lengths == max_new_tokens).any(), new


# ---- generation against the reference -----------------------------------------------------------------------
DECODINGS = {
    "greedy": dict(max_new_tokens=8),
    "beam": dict(max_new_tokens=8, num_beams=3, min_new_tokens=2, length_penalty=0.5),
}


@pytest.mark.skipif(REF is None, reason=WHY)
@pytest.mark.parametrize("search", sorted(DECODINGS))
@torch.no_grad()
def test_generated_tokens_match_reference(search):
    """Identical new token ids, and `generate`'s strings are their decoding without special tokens (EvalModel's)."""
    ours, theirs = generation_pair(EOC)
    assert Capability.GENERATE in ours.capabilities
    decoding = DECODINGS[search]
    ref, margin, ref_steps = reference_generate(theirs, ours, **decoding)
    assert_nontrivial(ref, ours.tokenizer.convert_tokens_to_ids(EOC), decoding["max_new_tokens"])
    ids, steps = ours_generate(ours, **decoding)
    check_decisions(search, margin, steps, ref_steps)
    assert torch.equal(ids, ref), (ids, ref)
    texts = ours.generate(IMAGES, PROMPTS, **decoding)
    assert texts == ours.tokenizer.batch_decode(ref, skip_special_tokens=True) and not any(EOC in t for t in texts)


@pytest.mark.skipif(REF is None, reason=WHY)
@pytest.mark.parametrize("search", sorted(DECODINGS))
@torch.no_grad()
def test_decode_steps_that_emit_image_tokens_match_reference(search):
    """OpenFlamingo's cached-media rule when a decode step emits `<image>`: that call re-conditions the locations,
    so the emitting rows see image 1 and the others none from then on. Mirrored token for token."""
    ours, theirs = generation_pair("<image>")
    decoding = DECODINGS[search]
    ref, margin, ref_steps = reference_generate(theirs, ours, **decoding)
    emits = ref == ours.model.media_token_id  # (B, N)
    assert (emits.any(dim=0) & ~emits.all(dim=0)).any(), ref  # a step where some rows emit it and others do not
    ids, steps = ours_generate(ours, **decoding)
    check_decisions(f"{search}, emitting <image>", margin, steps, ref_steps)
    assert torch.equal(ids, ref), (ids, ref)


# ---- generation against our own uncached forward ------------------------------------------------------------
@torch.no_grad()
def argmax_loop(
    ours: FlamingoWrapper, images: torch.Tensor, prompt: str, max_new_tokens: int
) -> tuple[list[int], float]:
    """Greedy decoding the plain way: the whole sequence through the uncached forward at every step, one prompt
    alone (no padding). Returns the new tokens and the smallest top-2 gap."""
    ids = ours.tokenizer(prompt, return_tensors="pt")["input_ids"]  # (1, T)
    eoc, new, gaps = ours.tokenizer.convert_tokens_to_ids(EOC), [], []
    for _ in range(max_new_tokens):
        logits = ours.model(ids, None, images[None] if len(images) else None)[0, -1]  # (V,)
        top = logits.topk(2)
        gaps.append(float(top.values[0] - top.values[1]))
        new.append(int(top.indices[0]))
        ids = torch.cat([ids, top.indices[:1, None]], dim=1)
        if new[-1] == eoc:
            break
    return new, min(gaps)


def test_batched_cached_greedy_equals_an_uncached_argmax_loop():
    ours = generation_model(EOC)
    eoc, n = ours.tokenizer.convert_tokens_to_ids(EOC), 8
    ids = generate_ids(ours, IMAGES, PROMPTS, max_new_tokens=n)
    assert_nontrivial(ids, eoc, n)
    margins = []
    for i, (images, prompt) in enumerate(zip(IMAGES, PROMPTS)):
        plain, margin = argmax_loop(ours, images, prompt, n)
        margins.append(margin)
        assert ids[i, : len(plain)].tolist() == plain
        assert (ids[i, len(plain) :] == ours.tokenizer.pad_token_id).all()  # a stopped row is padded
    print(f"greedy vs argmax loop: smallest top-2 gap {min(margins):.3g}")
    assert min(margins) >= MARGIN


@torch.no_grad()
def test_prompts_without_images_run_text_only():
    """T_i = 0 for every prompt: no media at all, the text-only forward's greedy tokens and scores."""
    ours = generation_model(EOC)
    prompts, none = ["a red circle on the", "two blue squares<|endofchunk|>three"], [torch.zeros(0, 3, 32, 32)] * 2
    ids = generate_ids(ours, none, prompts, max_new_tokens=4)
    for i, prompt in enumerate(prompts):
        plain, margin = argmax_loop(ours, none[i], prompt, 4)
        assert ids[i, : len(plain)].tolist() == plain and margin >= MARGIN
    continuations = [" circle", " on the left"]
    plain = scores_the_plain_way(lambda ids, px: ours.model(ids, None, None), ours, none, prompts, continuations)
    record("text-only loglikelihood vs uncached forward", ours.loglikelihood(none, prompts, continuations), plain)


# ---- log-likelihoods ------------------------------------------------------------------------------------------
def plain_logprob(logits: torch.Tensor, prompt_len: int, cont: list[int], normalize: bool) -> torch.Tensor:
    """From (1, T, V) logits of prompt + continuation: the continuation's summed (or mean) log-probability."""
    logprobs = logits[0, prompt_len - 1 : -1].log_softmax(dim=-1)  # (L, V): position t predicts token t+1
    picked = logprobs.gather(1, torch.tensor(cont)[:, None])[:, 0]  # (L,)
    return picked.mean() if normalize else picked.sum()


def scores_the_plain_way(
    forward, ours: FlamingoWrapper, images: list, prompts: list[str], continuations: list[str], normalize=False
) -> torch.Tensor:
    """(B, C): each prompt + continuation alone through `forward(ids (1, T), images (1, T_img, C, H, W))`."""
    out = torch.zeros(len(prompts), len(continuations))
    for i, (imgs, prompt) in enumerate(zip(images, prompts)):
        p = ours.tokenizer(prompt)["input_ids"]
        for j, text in enumerate(continuations):
            c = ours.tokenizer(text, add_special_tokens=False)["input_ids"]
            out[i, j] = plain_logprob(forward(torch.tensor([p + c]), imgs[None]), len(p), c, normalize)
    return out


@pytest.mark.skipif(REF is None, reason=WHY)
@pytest.mark.parametrize("normalize", [False, True])
@torch.no_grad()
def test_loglikelihoods_match_the_reference_forward(normalize):
    ours, theirs = tiny_pair(True)
    lengths = [len(ours.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in CONTINUATIONS]
    assert min(lengths) == 1 and max(lengths) >= 3  # single- and multi-token continuations
    forward = lambda ids, px: theirs(vision_x=px[:, :, None], lang_x=ids).logits  # noqa: E731
    ref = scores_the_plain_way(forward, ours, IMAGES, PROMPTS, CONTINUATIONS, normalize)
    got = ours.loglikelihood(IMAGES, PROMPTS, CONTINUATIONS, normalize_length=normalize)
    assert got.shape == (len(PROMPTS), len(CONTINUATIONS))
    record(f"loglikelihood ({'mean' if normalize else 'sum'}) vs the reference's forward", got, ref)


@pytest.mark.parametrize("normalize", [False, True])
@torch.no_grad()
def test_batched_cached_loglikelihoods_equal_per_sample_uncached_ones(normalize):
    """Left padding, the prompt cache shared by all continuations, positions and masks: equal to each sequence
    alone through our uncached forward."""
    ours = tiny_flamingo()
    plain = scores_the_plain_way(
        lambda ids, px: ours.model(ids, None, px), ours, IMAGES, PROMPTS, CONTINUATIONS, normalize
    )
    got = ours.loglikelihood(IMAGES, PROMPTS, CONTINUATIONS, normalize_length=normalize)
    record(f"loglikelihood ({'mean' if normalize else 'sum'}) batched+cached vs per-sample uncached", got, plain)
    assert (got[:, 1:] - got[:, :1]).abs().min() > TOL  # the continuations' scores differ: nothing trivially equal


# ---- errors and the preset --------------------------------------------------------------------------------------
def tiny_with_positions(n: int) -> FlamingoWrapper:
    return build_model(Registry(roots=[REPO]).model("flamingo-tiny", {"arch": {"lm": {"max_position_embeddings": n}}}))


def test_a_prompt_longer_than_the_context_is_an_error_naming_the_lengths():
    ours = tiny_with_positions(16).eval()
    prompt = "<image> a red circle<|endofchunk|><image> two blue squares"
    n = len(ours.tokenizer(prompt)["input_ids"])
    images = [randn(2, 3, 32, 32, seed=0)]
    assert len(ours.generate(images, [prompt], max_new_tokens=16 - n)) == 1  # exactly fits
    with pytest.raises(ConfigError) as e:
        ours.generate(images, [prompt], max_new_tokens=17 - n)
    assert str(e.value) == (
        f"model 'flamingo-tiny': prompt 0 is {n} tokens long; with max_new_tokens={17 - n} it needs 17 positions but "
        "the language model has 16 (max_position_embeddings)"
    )
    longest = " a red circle on the left of two blue squares"
    c = len(ours.tokenizer(longest, add_special_tokens=False)["input_ids"])
    assert n + c > 16
    with pytest.raises(
        ConfigError, match=rf"prompt 0 is {n} tokens long; with its longest continuation \({c} tokens\)"
    ):
        ours.loglikelihood(images, [prompt], [" yes", longest])


def test_prompts_and_images_must_agree():
    ours = build_model(Registry(roots=[REPO]).model("flamingo-tiny")).eval()
    with pytest.raises(ValueError, match="prompt 1 holds 2 <image> tokens but 1 images"):
        ours.generate([randn(1, 3, 32, 32, seed=0)] * 2, ["<image> a", "<image> b <image> c"], max_new_tokens=2)
    with pytest.raises(ValueError, match="continuation 0 .* must hold tokens and no media token"):
        ours.loglikelihood([randn(1, 3, 32, 32, seed=0)], ["<image> a"], [""])


def test_the_longer_rotary_context_adds_no_weights():
    """flamingo-tiny's LM grew from 128 to 2048 positions for 32-shot prompts: GPT-NeoX positions are rotary, so the
    seeded weights are exactly those of the 128-position model, and text tasks are still cut by the preset."""
    grown, before = build_model(Registry(roots=[REPO]).model("flamingo-tiny")), tiny_with_positions(128)
    assert grown.model.lang_encoder.config.max_position_embeddings == 2048
    a, b = grown.state_dict(), before.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert grown.text_length() == 77 and grown.text_length(128) == 128
