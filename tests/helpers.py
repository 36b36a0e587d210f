"""Test helpers shared across test modules (not fixtures: plain functions)."""

from __future__ import annotations

import torch
from torch import nn


def randomize_(module: nn.Module, seed: int = 0, std: float = 0.5) -> nn.Module:
    """Give *every* parameter seeded non-trivial values: weights ~ N(0, std/sqrt(fan_in)), 1-D norm weights
    ~ 1 + N(0, 0.2), biases and scalar gates ~ N(0, 0.5).

    Parity tests need this: default inits leave LayerNorms at 1/0 and gates at 0, which hides wiring bugs.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim >= 2:
                value = noise * std / max(1, p.shape[-1]) ** 0.5
            elif name.endswith("weight") and "norm" in name.lower():
                value = 1.0 + 0.2 * noise
            else:
                value = 0.5 * noise
            p.copy_(value.to(p.dtype))
    return module
