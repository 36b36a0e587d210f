"""Flamingo's GENERATE capability: batched generation and continuation log-likelihoods over interleaved prompts.

Mirrors how open-flamingo 2.0.1 evaluates (`open_flamingo/eval/models/open_flamingo.py`, `EvalModel.get_outputs`
driving `Flamingo.generate`): prompts left padded, images encoded once and repeated per beam, the LM's own HF
`generate` with its KV cache, `<|endofchunk|>` as the end-of-sequence token, only the new tokens decoded without
special tokens. Cross-attention under the cache follows OpenFlamingo's cached-media rule (`Flamingo._condition_call`).
Proven token for token against the reference's `Flamingo.generate`, and log-likelihoods against its plain forward,
in tests/test_flamingo_generate.py.

Deliberate differences from the reference:
- A prompt that does not fit the LM's positions (with the new tokens) is a `ConfigError`; OpenFlamingo truncates
  prompts at 2000 tokens from the right, which cuts off the query.
- Position ids count real tokens only, so a left-padded row is numbered as it would be alone (HF `generate` does
  this for LMs whose forward takes `position_ids`; the reference's mixin forward hides them, so its padded rows
  start at their pad count, which rotary positions make equal up to rounding).
- `loglikelihood` prefills each prompt once, then runs each continuation on that cache with the prompt's attention
  mask extended and positions continued. OpenFlamingo's cached scoring passes no attention mask for the
  continuation tokens, so in a left-padded batch they attend to the padding.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mmbench.errors import ConfigError

if TYPE_CHECKING:
    from mmbench.models.flamingo import FlamingoWrapper


@dataclass
class Prompts:
    """A batch of prompts, left padded, with their images already resampled."""

    input_ids: Tensor  # (B, T)
    attention_mask: Tensor  # (B, T)
    media: Tensor | None  # (B, T_img, n, Dv); None: no prompt has an image


def encode_prompts(
    wrapper: FlamingoWrapper, images: list[Tensor], prompts: list[str], new_tokens: int, what: str
) -> Prompts:
    """Tokenize `prompts` (left padded, never truncated) and encode their images once. `new_tokens` more positions
    (`what` they are, for the error) must fit after each prompt; `images[i]` (T_i, C, H, W) holds one image per
    `<image>` of prompt i."""
    if not prompts or len(images) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts and {len(images)} image lists: need as many, at least one")
    model = wrapper.model
    device = next(model.parameters()).device
    # Not verbose: the tokenizer's model_max_length is the preset's feature length (77), not the LM's context, which
    # check_context enforces.
    enc = wrapper.tokenizer(prompts, padding="longest", padding_side="left", return_tensors="pt", verbose=False)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)  # (B, T) each
    check_context(wrapper, mask.sum(dim=-1).tolist(), new_tokens, what)
    counts = (ids == model.media_token_id).sum(dim=-1).tolist()
    for i, (count, imgs) in enumerate(zip(counts, images)):
        if count != len(imgs):
            raise ValueError(f"prompt {i} holds {count} {wrapper.arch.media_token} tokens but {len(imgs)} images")
    most = max(counts, default=0)
    if most == 0:
        return Prompts(ids, mask, None)
    first = next(imgs for imgs in images if len(imgs))
    dtype = next(model.vision_encoder.parameters()).dtype
    pixels = first.new_zeros((len(images), most, *first.shape[1:]), dtype=dtype, device=device)  # (B, T_img, C, H, W)
    for i, imgs in enumerate(images):  # rows with fewer images keep zeros there, as OpenFlamingo pads them
        pixels[i, : len(imgs)] = imgs
    return Prompts(ids, mask, model.encode_media(pixels))


def check_context(wrapper: FlamingoWrapper, lengths: list[int], new_tokens: int, what: str) -> None:
    """A prompt whose tokens and `new_tokens` more exceed the LM's positions is an error naming the lengths."""
    limit = getattr(wrapper.model.lang_encoder.config, "max_position_embeddings", None)
    if limit is None:
        return
    for i, n in enumerate(lengths):
        if n + new_tokens > limit:
            raise ConfigError(
                f"model {wrapper.cfg.name!r}: prompt {i} is {n} tokens long; with {what} it needs {n + new_tokens} "
                f"positions but the language model has {limit} (max_position_embeddings)"
            )


@torch.no_grad()
def generate_ids(
    wrapper: FlamingoWrapper,
    images: list[Tensor],
    prompts: list[str],
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    min_new_tokens: int = 0,
    length_penalty: float = 1.0,
) -> Tensor:
    """(B, N) new token ids of each prompt's best sequence (N <= max_new_tokens; rows that stopped early are
    padded with the pad token). Arguments as `ModelWrapper.generate`."""
    if max_new_tokens < 1 or num_beams < 1 or not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(
            f"need max_new_tokens >= 1, num_beams >= 1 and 0 <= min_new_tokens <= max_new_tokens; got "
            f"{max_new_tokens}, {num_beams}, {min_new_tokens}"
        )
    model, tok = wrapper.model, wrapper.tokenizer
    batch = encode_prompts(wrapper, images, prompts, max_new_tokens, f"max_new_tokens={max_new_tokens}")
    media = batch.media
    if media is not None and num_beams > 1:  # HF's beam search expands each prompt to num_beams adjacent rows
        media = media.repeat_interleave(num_beams, dim=0)  # (B*beams, T_img, n, Dv)
    with model.conditioned(media, cached=True):
        out = model.lang_encoder.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            eos_token_id=tok.convert_tokens_to_ids(wrapper.arch.end_of_chunk_token),
            pad_token_id=tok.pad_token_id,
            do_sample=False,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            length_penalty=length_penalty,
        )
    return out[:, batch.input_ids.shape[1] :]  # (B, N)


@torch.no_grad()
def continuation_logprobs(
    wrapper: FlamingoWrapper,
    images: list[Tensor],
    prompts: list[str],
    continuations: list[str],
    normalize_length: bool = False,
) -> Tensor:
    """(B, C) log-probabilities of each continuation after each prompt; arguments as `ModelWrapper.loglikelihood`.

    The prompts are prefilled once; each continuation then runs as B rows on that cache, which is cropped back to
    the prompt afterwards. So memory holds one prompt cache whatever the number of continuations (C copies would
    grow with the class count), and a continuation's tokens need no padding (all rows share them)."""
    model, lm = wrapper.model, wrapper.model.lang_encoder
    cont_ids = [wrapper.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if not continuations:
        raise ValueError("no continuations to score")
    for j, ids in enumerate(cont_ids):
        if not ids or model.media_token_id in ids:
            raise ValueError(f"continuation {j} ({continuations[j]!r}) must hold tokens and no media token")
    longest = max(len(c) for c in cont_ids)
    batch = encode_prompts(wrapper, images, prompts, longest, f"its longest continuation ({longest} tokens)")
    mask = batch.attention_mask
    lengths = mask.sum(dim=-1, keepdim=True)  # (B, 1) real prompt tokens
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, T): real tokens numbered from 0, as if unpadded
    name = cache_argument(lm)
    # Continuations hold no media token, so under the cached rule every one of their tokens sees the prompt's last
    # image, as it would at the end of the prompt in one uncached pass.
    with model.conditioned(batch.media, cached=True):
        out = lm(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        cache = getattr(out, name)
        first = out.logits[:, -1].float().log_softmax(dim=-1)  # (B, V): each continuation's first token
        scores = []
        for ids in cont_ids:
            tokens = torch.tensor(ids, device=mask.device).expand(len(prompts), -1)  # (B, L)
            logprobs = first.gather(1, tokens[:, :1])  # (B, 1)
            if tokens.shape[1] > 1:  # the last token's own prediction is not needed: feed tokens[:, :-1]
                logprobs = torch.cat([logprobs, _next_logprobs(lm, name, cache, tokens, mask, lengths)], dim=1)
            scores.append(logprobs.mean(dim=1) if normalize_length else logprobs.sum(dim=1))  # (B,)
    return torch.stack(scores, dim=1)  # (B, C)


def _next_logprobs(lm: Any, name: str, cache: Any, tokens: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
    """(B, L-1) log-probabilities of tokens[:, 1:], feeding tokens[:, :-1] after the cached prompt."""
    feed = tokens[:, :-1]  # (B, L-1)
    step_mask = torch.cat([mask, torch.ones_like(feed)], dim=1)  # (B, T+L-1): the prompt's padding stays masked
    step_positions = lengths + torch.arange(feed.shape[1], device=feed.device)  # (B, L-1)
    out = lm(input_ids=feed, attention_mask=step_mask, position_ids=step_positions, use_cache=True, **{name: cache})
    cache.crop(-feed.shape[1])  # back to the prompt alone for the next continuation
    return out.logits.float().log_softmax(dim=-1).gather(2, tokens[:, 1:, None])[..., 0]  # (B, L-1)


def cache_argument(lm: Any) -> str:
    """The name the LM's forward gives its KV cache: `cache` since transformers 5.x renamed it, else
    `past_key_values` (output fields carry the same name)."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
