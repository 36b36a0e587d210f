"""mmbench: the FLAVA paper's 35 vision-and-language tasks behind one small model-wrapper protocol.

Importing mmbench is cheap: torch, transformers and lightning load only when a run starts.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "results"]


def evaluate(*args: Any, **kwargs: Any) -> Any:
    """See `mmbench.api.evaluate`."""
    from mmbench.api import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def __getattr__(name: str) -> Any:
    """`mmbench.results` without an import of its own (`mmbench.results.load(path)` in a notebook); loaded on first
    use so that `import mmbench` stays cheap."""
    if name == "results":
        import importlib

        return importlib.import_module("mmbench.results")
    raise AttributeError(f"module 'mmbench' has no attribute {name!r}")
