"""Model presets -> wrappers. Wrapper classes are imported lazily from the preset's `wrapper: module:Class`, so
importing mmbench does not import transformers. Neither does importing this package import torch: `Capability`
and `ModelWrapper` come from `models.base` on first use, so that `mmbench list models` (which reads the spec
families of `models.specs`) stays a sub-second command."""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any

from mmbench.errors import ConfigError
from mmbench.schema import ModelConfig

if TYPE_CHECKING:
    from mmbench.models.base import Capability, ModelWrapper

__all__ = ["Capability", "ModelWrapper", "build_model", "wrapper_class"]


def __getattr__(name: str) -> Any:
    if name in ("Capability", "ModelWrapper"):
        from mmbench.models import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def wrapper_class(cfg: ModelConfig) -> type[ModelWrapper]:
    from mmbench.models.base import ModelWrapper

    module_name, _, attr = cfg.wrapper.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model {cfg.name!r}: key 'wrapper': cannot import {cfg.wrapper!r} ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, ModelWrapper)):
        raise ConfigError(f"model {cfg.name!r}: key 'wrapper': {cfg.wrapper!r} is not a ModelWrapper")
    return cls


def build_model(cfg: ModelConfig) -> ModelWrapper:
    """Build the wrapper a preset names, with its weights (hub id, local directory or file, or random init)."""
    start = time.perf_counter()
    cls = wrapper_class(cfg)
    cls.check_config(cfg)  # also for configs that did not come through the registry
    model = cls.from_config(cfg)
    model.build_seconds = time.perf_counter() - start
    return model.eval()
