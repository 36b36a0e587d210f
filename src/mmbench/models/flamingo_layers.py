"""Flamingo's own layers: the Perceiver Resampler and the gated cross-attention block (Alayrac et al. 2022).

Mirrors `open_flamingo/src/helpers.py` of open-flamingo 2.0.1 (`PerceiverResampler`, `MaskedCrossAttention`,
`GatedCrossAttentionBlock`), including its parameter names, so OpenFlamingo checkpoints load without renaming:
`latents`, `layers.{i}.0.{norm_media,norm_latents,to_q,to_kv,to_out}`, `layers.{i}.1.{0,1,3}` (feed-forward),
`norm`; `attn.{norm,to_q,to_kv,to_out}`, `attn_gate`, `ff.{0,1,3}`, `ff_gate`. The reference at 2.0.1 builds its
resampler without media-time or frame embeddings, so there are none here. Proven equal to the reference in
tests/test_flamingo_parity.py.

One deliberate difference: text with no preceding image gets no cross-attention in *both* masking modes. The
reference zeroes it only when `only_attend_immediate_media=True`; with False, such a token's fully masked
scores turn into a uniform average over all images. Released OpenFlamingo models use True, where both agree.

Which image a token sees is its "text time" (`media_time`): the 1-based index of the latest `<image>` at or before
it. The blocks take it from `media_locations`, or ready-made as `text_time` when the caller knows better: under a
KV cache a decode step's tokens hold no `<image>`, and `Flamingo` gives them the count of the prompt's images
(OpenFlamingo's `use_cached_media`, see `flamingo.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeedForward(nn.Sequential):
    """Pre-norm MLP without biases: LayerNorm -> Linear(dim, mult*dim) -> GELU -> Linear(mult*dim, dim)."""

    def __init__(self, dim: int, mult: int = 4):
        inner = int(dim * mult)
        super().__init__(
            nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False)
        )


def _split_heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)  # (..., N, h*d) -> (..., h, N, d)


def _merge_heads(x: Tensor) -> Tensor:
    return x.transpose(-3, -2).flatten(-2)  # (..., h, N, d) -> (..., N, h*d)


class PerceiverAttention(nn.Module):
    """Latents attend to concat(media, latents): the latents' own keys let them keep what they already hold."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor) -> Tensor:
        media = self.norm_media(media)  # (B, T, v, D)
        latents = self.norm_latents(latents)  # (B, T, n, D)
        q = _split_heads(self.to_q(latents), self.heads)  # (B, T, h, n, d)
        k, v = self.to_kv(torch.cat([media, latents], dim=-2)).chunk(2, dim=-1)  # (B, T, v+n, h*d) each
        out = F.scaled_dot_product_attention(q, _split_heads(k, self.heads), _split_heads(v, self.heads))
        return self.to_out(_merge_heads(out))  # (B, T, n, D)


class PerceiverResampler(nn.Module):
    """Maps each image's variable number of patch tokens to `num_latents` tokens."""

    def __init__(
        self, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8, num_latents: int = 64, ff_mult: int = 4
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        # [attention, feed-forward] pairs as plain ModuleLists: the checkpoint names them `layers.{i}.{0,1}`.
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), FeedForward(dim, ff_mult)]) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, media: Tensor) -> Tensor:
        """(B, T_img, v, D) patch tokens of T_img images per sample -> (B, T_img, num_latents, D)."""
        b, t = media.shape[:2]
        latents = self.latents.expand(b, t, -1, -1)  # (B, T_img, n, D)
        for attn, ff in self.layers:
            latents = attn(media, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)  # (B, T_img, n, D)


def media_time(media_locations: Tensor) -> Tensor:
    """(B, T) bool, True at `<image>` tokens -> (B, T) 1-based index of the latest image at or before each token
    (0 before the first image)."""
    return media_locations.long().cumsum(dim=-1)


class MaskedCrossAttention(nn.Module):
    """Text queries attend to the resampled tokens of the image(s) their position allows."""

    def __init__(
        self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, only_attend_immediate_media: bool = True
    ):
        super().__init__()
        self.heads = heads
        # True: a token sees only the latest preceding image (Flamingo); False: every preceding image.
        self.only_attend_immediate_media = only_attend_immediate_media
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, media: Tensor, text_time: Tensor) -> Tensor:
        """x (B, T, D) text states; media (B, T_img, n, Dv); text_time (B, T) from `media_time` -> (B, T, D)."""
        if text_time.shape != x.shape[:2]:
            raise ValueError(f"text_time {tuple(text_time.shape)} does not match text {tuple(x.shape[:2])}")
        t_img, n = media.shape[1:3]
        image_of_key = torch.arange(1, t_img + 1, device=x.device).repeat_interleave(n)  # (T_img*n,)
        if self.only_attend_immediate_media:
            allowed = text_time[:, :, None] == image_of_key  # (B, T, T_img*n)
        else:
            allowed = text_time[:, :, None] >= image_of_key  # (B, T, T_img*n)
        has_media = (text_time > 0)[:, :, None]  # (B, T, 1)
        # A fully masked row would give NaN; let those rows attend anywhere and zero their output below.
        mask = (allowed | ~has_media)[:, None]  # (B, 1, T, T_img*n)

        q = _split_heads(self.to_q(self.norm(x)), self.heads)  # (B, h, T, d)
        k, v = self.to_kv(media.flatten(1, 2)).chunk(2, dim=-1)  # (B, T_img*n, h*d) each
        out = F.scaled_dot_product_attention(q, _split_heads(k, self.heads), _split_heads(v, self.heads), mask)
        out = _merge_heads(out) * has_media  # (B, T, h*d); no image yet -> no cross-attention
        return self.to_out(out)  # (B, T, D)


class GatedCrossAttentionBlock(nn.Module):
    """`x = tanh(attn_gate)·xattn(LN x, media) + x; x = tanh(ff_gate)·FF(x) + x`, gates initialised to 0 so that
    the frozen LM starts out unchanged."""

    def __init__(
        self,
        dim: int,
        dim_visual: int,
        dim_head: int = 64,
        heads: int = 8,
        ff_mult: int = 4,
        only_attend_immediate_media: bool = True,
    ):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads, only_attend_immediate_media)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = FeedForward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self, x: Tensor, media: Tensor | None, media_locations: Tensor | None = None, text_time: Tensor | None = None
    ) -> Tensor:
        """x (B, T, D) -> (B, T, D); which image each token sees from `media_locations` (B, T) bool, or from a
        ready-made `text_time` (B, T). `media=None` (text only) skips the attention, whose output would be all
        zeros, but keeps the gated feed-forward, exactly as for text before the first image."""
        if media is not None:
            if (media_locations is None) == (text_time is None):
                raise ValueError("media needs exactly one of media_locations and text_time")
            if text_time is None:
                text_time = media_time(media_locations)  # (B, T)
            x = self.attn(x, media, text_time) * self.attn_gate.tanh() + x
        return self.ff(x) * self.ff_gate.tanh() + x
