"""The BEiT-3 Multiway Transformer backbone, module for module the layout of `torchscale==0.3.0`'s `BEiT3`.

Every sublayer is a pair of experts, `A` for vision tokens and `B` for language tokens (q/k/v/out projections,
every LayerNorm including the Sub-LN inner ones, and the FFN); attention is joint over the concatenated sequence,
vision first. Which tokens go to which expert is the `split_position` passed down through `forward` (torchscale
stores it in every submodule with `set_split_position`, which makes a module's behaviour depend on its last call):
-1 = vision only, 0 = language only, n = the first n tokens are vision.

State-dict keys equal torchscale's, so a released `beit3_*.pth` loads into `Beit3Model` after stripping `beit3.`.
Proven equal to torchscale in tests/test_beit3_parity.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Vision position rows before the patch grid: fairseq's two unused rows (positions start at 2) and the [CLS] row.
VISION_EXTRA_POSITIONS = 3


@dataclass
class Beit3Config:
    """Architecture of the released models; field names are torchscale `EncoderConfig`'s, with the same meaning."""

    encoder_embed_dim: int = 768
    encoder_layers: int = 12
    encoder_attention_heads: int = 12
    encoder_ffn_embed_dim: int = 3072
    patch_size: int = 16
    in_chans: int = 3
    img_size: int | None = None  # size of the vision position table; None: the preset's preprocess.image_size
    vocab_size: int = 64010
    max_source_positions: int = 1024  # rows of the language position table
    layernorm_eps: float = 1e-5
    # The final Multiway LayerNorm. unilm drops it (`normalize_output=False`) for its VQA and ImageNet models, so
    # their checkpoints have no `beit3.encoder.layer_norm.*`.
    normalize_output: bool = True
    drop_path_rate: float = 0.0  # stochastic depth for fine-tuning, linear over depth as in torchscale


class Beit3Output(NamedTuple):
    last_hidden_state: Tensor  # (B, T, D), vision tokens first
    split_position: int  # -1 vision only, 0 language only, else the number of vision tokens


class Multiway(nn.Module):
    """A vision expert `A` and a language expert `B` of the same shape; tokens before `split_position` go to A."""

    def __init__(self, make: Callable[[], nn.Module]):
        super().__init__()
        self.A = make()
        self.B = make()

    def forward(self, x: Tensor, split_position: int) -> Tensor:
        if split_position == -1:
            return self.A(x)
        if split_position == 0:
            return self.B(x)
        vision, text = x[:, :split_position], x[:, split_position:]  # (B, Tv, D), (B, Tt, D)
        return torch.cat([self.A(vision), self.B(text)], dim=1)  # (B, Tv+Tt, D)


class FeedForward(nn.Module):
    """fc1 -> exact GELU -> Sub-LN -> fc2 (one expert)."""

    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.fc1(x).float()).type_as(x)  # (B, T, H); GELU in float32 as torchscale does under fp16
        return self.fc2(self.ffn_layernorm(h))  # (B, T, D)


class MultiwayAttention(nn.Module):
    """Joint self-attention with per-modality q/k/v/out projections and a Sub-LN before the output projection."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"encoder_embed_dim {dim} is not divisible by encoder_attention_heads {num_heads}")
        self.num_heads = num_heads
        self.k_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.v_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.q_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.out_proj = Multiway(lambda: nn.Linear(dim, dim))
        self.inner_attn_ln = Multiway(lambda: nn.LayerNorm(dim, eps=eps))

    def forward(self, x: Tensor, split_position: int, key_padding_mask: Tensor | None) -> Tensor:
        b, t, d = x.shape
        h = self.num_heads

        def heads(proj: Multiway) -> Tensor:
            return proj(x, split_position).view(b, t, h, d // h).transpose(1, 2)  # (B, h, T, d/h)

        q, k, v = heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)
        keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, T) True=attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, h, T, d/h)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.out_proj(self.inner_attn_ln(y, split_position), split_position)  # (B, T, D)


class Beit3Layer(nn.Module):
    """Pre-LN block with Sub-LN: h = x + out(innerLN(MHA(LN1 x))); y = h + fc2(ffnLN(gelu(fc1(LN2 h))))."""

    def __init__(self, cfg: Beit3Config, drop_path: float):
        super().__init__()
        d, eps = cfg.encoder_embed_dim, cfg.layernorm_eps
        self.self_attn = MultiwayAttention(d, cfg.encoder_attention_heads, eps)
        self.self_attn_layer_norm = Multiway(lambda: nn.LayerNorm(d, eps=eps))
        self.ffn = Multiway(lambda: FeedForward(d, cfg.encoder_ffn_embed_dim, eps))
        self.final_layer_norm = Multiway(lambda: nn.LayerNorm(d, eps=eps))
        self.drop_path = drop_path

    def forward(self, x: Tensor, split_position: int, key_padding_mask: Tensor | None) -> Tensor:
        h = self.self_attn(self.self_attn_layer_norm(x, split_position), split_position, key_padding_mask)
        x = x + _drop_path(h, self.drop_path, self.training)  # (B, T, D)
        h = self.ffn(self.final_layer_norm(x, split_position), split_position)
        return x + _drop_path(h, self.drop_path, self.training)  # (B, T, D)


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth per sample, rescaled by 1/keep (timm's `drop_path`, which torchscale uses)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.size(0),) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)  # (B, 1, 1)
    return x * keep / (1.0 - p)


class Positions(nn.Module):
    """Learned absolute positions per modality (`A` vision, `B` language); both start at row 2 as in fairseq."""

    def __init__(self, vision_rows: int, text_rows: int, dim: int):
        super().__init__()
        self.A = nn.Embedding(vision_rows, dim)
        self.B = nn.Embedding(text_rows, dim)

    def vision(self, grid: tuple[int, int]) -> Tensor:
        table = interpolate_vision_positions(self.A.weight, grid)  # (3 + gh*gw, D); a no-op at the trained size
        return table[2:]  # (1 + gh*gw, D): [CLS] then the patches

    def text(self, length: int) -> Tensor:
        if length + 2 > self.B.num_embeddings:
            raise ValueError(f"text of {length} tokens exceeds max_source_positions={self.B.num_embeddings} - 2")
        return self.B.weight[2 : length + 2]  # (T, D)


class VisionEmbedding(nn.Module):
    """Patch embedding with a prepended [CLS] token."""

    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        # Masked image modelling (pre-training only); kept so that released checkpoints load key for key.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(pixel_values)  # (B, D, gh, gw)
        grid = (x.size(2), x.size(3))
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, D)
        return torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1), grid  # (B, 1+gh*gw, D)


class Beit3Encoder(nn.Module):
    def __init__(self, cfg: Beit3Config, vision_rows: int):
        super().__init__()
        self.embed_positions = Positions(vision_rows, cfg.max_source_positions, cfg.encoder_embed_dim)
        n = cfg.encoder_layers
        rates = [cfg.drop_path_rate * i / max(1, n - 1) for i in range(n)]  # np.linspace(0, rate, n), as torchscale
        self.layers = nn.ModuleList(Beit3Layer(cfg, p) for p in rates)
        eps = cfg.layernorm_eps
        self.layer_norm = (
            Multiway(lambda: nn.LayerNorm(cfg.encoder_embed_dim, eps=eps)) if cfg.normalize_output else None
        )


class Beit3Model(nn.Module):
    """The backbone: `text_embed`, `vision_embed`, `encoder` (torchscale's `BEiT3` key layout)."""

    def __init__(self, cfg: Beit3Config):
        super().__init__()
        if cfg.img_size is None:
            raise ValueError("Beit3Config.img_size must be set (the wrapper fills it from preprocess.image_size)")
        self.cfg = cfg
        grid = cfg.img_size // cfg.patch_size
        self.text_embed = nn.Embedding(cfg.vocab_size, cfg.encoder_embed_dim)
        self.vision_embed = VisionEmbedding(cfg.patch_size, cfg.in_chans, cfg.encoder_embed_dim)
        self.encoder = Beit3Encoder(cfg, grid * grid + VISION_EXTRA_POSITIONS)

    def forward(
        self,
        pixel_values: Tensor | None = None,
        input_ids: Tensor | None = None,
        padding_mask: Tensor | None = None,
        final_norm: bool = True,
    ) -> Beit3Output:
        """Vision-only, language-only or joint pass. `padding_mask` is True (or 1) at text padding, as unilm's
        `padding_mask`; `final_norm=False` skips the final LayerNorm, as unilm's `normalize_output=False` heads."""
        parts: list[Tensor] = []
        if pixel_values is not None:
            vision, grid = self.vision_embed(pixel_values)  # (B, Tv, D)
            parts.append(vision + self.encoder.embed_positions.vision(grid))
        if input_ids is not None:
            text = self.text_embed(input_ids)  # (B, Tt, D)
            parts.append(text + self.encoder.embed_positions.text(input_ids.size(1)))
        if not parts:
            raise ValueError("Beit3Model needs pixel_values, input_ids or both")
        x = torch.cat(parts, dim=1)  # (B, T, D)

        if pixel_values is None:
            split_position = 0
        elif input_ids is None:
            split_position = -1
        else:
            split_position = parts[0].size(1)

        mask = None
        if input_ids is not None and padding_mask is not None:
            mask = padding_mask.bool()  # (B, Tt)
            if split_position > 0:
                mask = F.pad(mask, (split_position, 0), value=False)  # (B, T): vision tokens are never padding
            x = x.masked_fill(mask[..., None], 0.0)  # padded embeddings are zeroed, as torchscale does

        for layer in self.encoder.layers:
            x = layer(x, split_position, mask)  # (B, T, D)
        if final_norm and self.encoder.layer_norm is not None:
            x = self.encoder.layer_norm(x, split_position)
        return Beit3Output(x, split_position)


class Pooler(nn.Module):
    """unilm's VQA pooler: LayerNorm -> Linear -> tanh of the vision [CLS] state."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dense = nn.Linear(dim, dim)

    def forward(self, cls_state: Tensor) -> Tensor:
        return torch.tanh(self.dense(self.norm(cls_state)))  # (B, D)


def interpolate_vision_positions(table: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resize a vision position table `(3 + g*g, D)` to the patch grid `grid` by bicubic interpolation of the
    patch rows, keeping the 3 leading rows (unilm `utils.load_model_and_may_interpolate`: 224/16 = 14 -> 480/16 = 30
    per side for VQA). Returns `table` itself when the grid already matches."""
    patches = table.size(0) - VISION_EXTRA_POSITIONS
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"vision position table of {table.size(0)} rows is not 3 + a square patch grid")
    if (side, side) == tuple(grid):
        return table
    dim = table.size(1)
    square = table[VISION_EXTRA_POSITIONS:].reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
    resized = F.interpolate(square.float(), size=tuple(grid), mode="bicubic", align_corners=False)  # (1, D, gh, gw)
    resized = resized.permute(0, 2, 3, 1).reshape(-1, dim).to(table.dtype)  # (gh*gw, D)
    return torch.cat([table[:VISION_EXTRA_POSITIONS], resized], dim=0)  # (3 + gh*gw, D)


def init_weights_(module: nn.Module) -> None:
    """unilm's `BEiT3Wrapper._init_weights` (truncated normal 0.02 for linear maps, LayerNorm 1/0), extended to
    embeddings and tokens, for random-init presets and for heads a checkpoint does not carry."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-0.02, b=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, VisionEmbedding):
            nn.init.trunc_normal_(m.cls_token, std=0.02, a=-0.02, b=0.02)
            nn.init.trunc_normal_(m.mask_token, std=0.02, a=-0.02, b=0.02)
