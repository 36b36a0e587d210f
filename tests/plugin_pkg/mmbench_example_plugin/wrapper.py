"""A wrapper that lives outside mmbench: IMAGE features are a fixed random projection of the image's average-pooled
pixels. Nothing here is mmbench-internal beyond the public wrapper protocol (`mmbench.models.base`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmbench.models.base import Capability, ModelWrapper, parse_arch
from mmbench.schema import ModelConfig


@dataclass
class RandomProjectionArch:
    dim: int = 32  # feature size
    grid: int = 4  # pixels are average-pooled to grid x grid per channel before the projection


class RandomProjectionWrapper(ModelWrapper):
    capabilities = Capability.IMAGE
    arch_schema = RandomProjectionArch

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        arch = parse_arch(cfg, RandomProjectionArch)
        self.grid = arch.grid
        generator = torch.Generator().manual_seed(cfg.init_seed)
        weight = torch.randn(3 * arch.grid * arch.grid, arch.dim, generator=generator)  # (3*G*G, D)
        self.register_buffer("projection", weight / weight.shape[0] ** 0.5)
        self.feature_dims = {"image": arch.dim}

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> RandomProjectionWrapper:
        return cls(cfg)

    def image_features(self, pixel_values: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(pixel_values, self.grid).flatten(1)  # (B, 3*G*G), any input size
        return pooled @ self.projection  # (B, D)


def small_preset() -> dict[str, Any]:
    """The entry point `example-randproj-small`: a preset mapping (what a plug-in returns to set more than the
    wrapper)."""
    return {
        "wrapper": "mmbench_example_plugin.wrapper:RandomProjectionWrapper",
        "description": "random projection at 32 px (example plug-in)",
        "random_init": True,
        "preprocess": {"image_size": 32, "resize": 32},
        "arch": {"dim": 16},
    }
