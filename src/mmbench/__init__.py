"""mmbench: the FLAVA paper's 35 vision-and-language tasks behind one small model-wrapper protocol.

Importing mmbench is cheap: torch, transformers and lightning load only when a run starts.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate"]


def evaluate(*args: Any, **kwargs: Any) -> Any:
    """See `mmbench.api.evaluate`."""
    from mmbench.api import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
