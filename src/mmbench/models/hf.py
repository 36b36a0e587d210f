"""Shared plumbing for wrappers around Hugging Face models: load-or-random-init and tokenization."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mmbench.models.base import hf_loading, require_checkpoint
from mmbench.schema import ModelConfig


def load_or_init(cfg: ModelConfig, model_cls: Any, make_config: Callable[[], Any]) -> Any:
    """`model_cls.from_pretrained(checkpoint)`, or for a random-init preset `model_cls(make_config())` seeded
    with `init_seed` (the global RNG is left untouched)."""
    if cfg.random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            return model_cls(make_config())
    source = require_checkpoint(cfg)
    with hf_loading(cfg):
        return model_cls.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)


def tokenize(
    tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int, keys: tuple[str, ...]
) -> dict[str, Tensor]:
    """Pad to the longest, truncate to `max_length`; keep only the inputs the model takes."""
    enc = tokenizer(
        list(texts),
        list(pairs) if pairs is not None else None,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return {k: enc[k] for k in keys if k in enc}
