"""Task heads and their losses for fine-tuning: classification (CE), regression (MSE) and soft-score multi-label
(BCE with logits, VQA).

Two head shapes (`FinetuneParams.head_activation`):
- `gelu`: dropout -> Linear(d, h) -> LayerNorm -> GELU -> Linear(h, out), the 2-layer MLP (h = 1536) the FLAVA
  paper puts on the fused [CLS] (and on concat(image, text) for CLIP); the Linear -> LayerNorm -> GELU -> Linear
  order is the BEiT-3 / VLMo VQA head's.
- `tanh`: dropout -> Linear(d, h) -> tanh -> dropout -> Linear(h, out), fairseq's `RobertaClassificationHead`
  (h = d), the GLUE recipe.
`head_hidden: 0` is a single dropout -> Linear.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

HEADS = ("classification", "regression", "vqa")


def make_head(in_dim: int, out_dim: int, hidden: int, dropout: float, activation: str) -> nn.Module:
    if hidden < 0:
        hidden = in_dim
    if hidden == 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    if activation == "gelu":
        return nn.Sequential(
            nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_dim)
        )
    if activation == "tanh":
        return nn.Sequential(
            nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
        )
    raise ValueError(f"head_activation {activation!r}: expected gelu or tanh")


def head_loss(kind: str, output: Tensor, target: Tensor) -> Tensor:
    """output: logits (B, C) or scores (B, 1); target: class ids (B,), real scores (B,) or soft scores (B, C)."""
    if kind == "classification":
        return F.cross_entropy(output.float(), target)
    if kind == "regression":
        return F.mse_loss(output.float().squeeze(-1), target.float())
    if kind == "vqa":
        # Mean BCE over answers times their number = summed over answers, averaged over questions: the scale of
        # the ViLT / BEiT-3 VQA recipes, so the paper's learning rate carries over.
        return F.binary_cross_entropy_with_logits(output.float(), target.float()) * target.shape[-1]
    raise ValueError(f"head {kind!r}: expected one of {', '.join(HEADS)}")
