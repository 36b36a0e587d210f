"""Errors that end a run with one clear line (the CLI prints them without a traceback unless --debug).

Each class has its own exit code (`EXIT_CODES`, documented in `mmbench --help` and the README), so that a script
or a scheduler can tell a typo from a corrupt dataset from a full disk without parsing messages.
"""

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


class OutputError(MMBenchError, OSError):
    """A result, cache or dataset that cannot be written where asked (read-only, disk full, not a folder, a folder
    that is not ours to replace); the message names the path meant, never a temporary name. Also an OSError, so
    that code which survives a failed write (a cache that can do without) catches it as one; `path` and `reason`
    (the OS's words), when known, let it say so in its own words."""

    def __init__(self, message: str, path: object = None, reason: str | None = None):
        super().__init__(message)
        self.path, self.reason = path, reason


class CapabilityError(MMBenchError):
    """A protocol asked a wrapper for something it cannot do; recorded as n/a, not a crash."""


# Exit status per outcome. 1 is `table --check` finding a stale leaderboard (as `diff` does); argparse's own usage
# errors exit 2 like ConfigError; anything not listed here is an internal error.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_CHECKPOINT = 4
EXIT_OUTPUT = 5
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: a bug, or an OS error mmbench did not anticipate
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_CHECK_FAILED: "`table --check`: the committed leaderboard differs from a fresh render",
    EXIT_CONFIG: "bad command line, override or YAML: unknown name or key, wrong type, out-of-range value",
    EXIT_DATA: "a dataset or result file that is missing, corrupt or malformed",
    EXIT_CHECKPOINT: "a model checkpoint that cannot be found or loaded",
    EXIT_OUTPUT: "cannot write a result, cache or dataset: read-only, disk full, not a folder, not ours to replace",
    EXIT_INTERNAL: "an unexpected error (a bug, or an OS error): --debug shows the traceback",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); results already written are kept",
}


def exit_code(exc: BaseException) -> int:
    """The exit status for an error that ended a command."""
    classes = ((ConfigError, EXIT_CONFIG), (DataError, EXIT_DATA), (CheckpointError, EXIT_CHECKPOINT))
    for cls, code in (*classes, (OutputError, EXIT_OUTPUT), (KeyboardInterrupt, EXIT_INTERRUPTED)):
        if isinstance(exc, cls):
            return code
    return EXIT_INTERNAL


def user_message(exc: BaseException) -> str:
    """The user-facing text of an error, also when a DataLoader worker re-raised it with its traceback inside."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        # torch's ExceptionWrapper re-raises `Type("Caught ... Original Traceback ...\nmodule.Type: message")`.
        last = text.splitlines()[-1]
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        text = last[len(prefix) :] if last.startswith(prefix) else last.split(": ", 1)[-1]
    return text or type(exc).__name__
