"""Protocols: *how* a task is evaluated. Addressed by the task's `protocol` name, imported lazily."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from mmbench.errors import ConfigError
from mmbench.protocols.base import ProtocolOutput, RunContext

__all__ = ["LOGS_SAMPLES", "PROTOCOLS", "ProtocolOutput", "RunContext", "get_protocol"]

PROTOCOLS: dict[str, str] = {
    "retrieval": "mmbench.protocols.retrieval:run",
    "finetune": "mmbench.protocols.finetune:run",
    "linear_probe": "mmbench.protocols.linear_probe:run",
    "incontext": "mmbench.protocols.incontext:run",
    "zeroshot": "mmbench.protocols.zeroshot:run",
}

# The protocols that return per-sample rows under `--log-samples` (in-context evaluation does not, yet).
LOGS_SAMPLES = ("finetune", "linear_probe", "retrieval", "zeroshot")


def get_protocol(name: str) -> Callable[..., ProtocolOutput]:
    if name not in PROTOCOLS:
        raise ConfigError(f"protocol {name!r} is not implemented yet (have: {', '.join(sorted(PROTOCOLS))})")
    module, _, attr = PROTOCOLS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
