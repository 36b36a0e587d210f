"""A result's provenance: library versions, the mmbench commit, device, strategy, precision, wall time and peak
memory of the run that made it. `mmbench.results.frame` and the cost table read it back."""

from __future__ import annotations

import platform
import resource
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmbench import __version__
from mmbench.protocols import RunContext


def provenance(ctx: RunContext, wall: float, build_seconds: float) -> dict[str, Any]:
    """What ran, where and at what cost: recorded in every result (versions, commit, device, time, memory)."""
    import lightning
    import torch
    import transformers

    from mmbench.models.specs import model_library

    opts = ctx.trainer
    cuda = torch.cuda.is_available() and opts.accelerator in ("auto", "gpu", "cuda")
    device = f"{torch.cuda.get_device_name(0)} x{opts.devices}" if cuda else f"cpu x{opts.devices}"
    device += f", {opts.num_nodes} nodes" if opts.num_nodes > 1 else ""
    return {
        "mmbench": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "model_library": model_library(ctx.model_cfg),  # a spec's or plug-in's library and version
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "seed": ctx.seed,
        "device": device,
        "strategy": opts.strategy,
        "precision": ctx.trainer.precision or "32-true",
        "wall_seconds": round(wall, 3),
        "model_build_seconds": round(build_seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def git_commit() -> str | None:
    """The commit of the mmbench checkout that ran (with `+dirty` when it had uncommitted changes)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            # --no-optional-locks: `git status` would otherwise take .git/index.lock to refresh the index, and a
            # run killed at that moment (kill -9, a timeout) leaves the lock behind and the user's repository stuck.
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")
