"""Model presets -> wrappers. Wrapper classes are imported lazily from the preset's `wrapper: module:Class`, so
importing mmbench does not import transformers."""

from __future__ import annotations

import importlib
import time

from mmbench.errors import ConfigError
from mmbench.models.base import Capability, ModelWrapper
from mmbench.schema import ModelConfig

__all__ = ["Capability", "ModelWrapper", "build_model", "wrapper_class"]


def wrapper_class(cfg: ModelConfig) -> type[ModelWrapper]:
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
