"""Errors that end a run with one clear line (the CLI prints them without a traceback unless --debug)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MMBenchError(Exception):
    """Base of every user-facing error: the message is the whole story, no traceback needed."""


class ConfigError(MMBenchError):
    """A YAML file, an override or a name that does not validate."""


class UnknownNameError(ConfigError):
    """An unknown model, task or group name; the message lists close matches."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} See `mmbench list {kind}s`.")
        self.name = name
        self.close_matches = close


class DataError(MMBenchError):
    """A dataset that is missing, corrupt or malformed; the message names the file and record."""


class CheckpointError(MMBenchError):
    """A checkpoint that cannot be found or loaded."""


class CapabilityError(MMBenchError):
    """A protocol asked a wrapper for something it cannot do; recorded as n/a, not a crash."""


def user_message(exc: BaseException) -> str:
    """The user-facing text of an error, also when a DataLoader worker re-raised it with its traceback inside."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        # torch's ExceptionWrapper re-raises `Type("Caught ... Original Traceback ...\nmodule.Type: message")`.
        last = text.splitlines()[-1]
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        text = last[len(prefix) :] if last.startswith(prefix) else last.split(": ", 1)[-1]
    return text or type(exc).__name__
