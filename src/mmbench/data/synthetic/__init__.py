"""`mmbench data synth`: small deterministic datasets in each task's real on-disk format, from the scene world.

A writer is registered per format (the same names as the readers in `mmbench.data.READERS`), addressed by string
so that importing this package stays cheap. The task's `data.synthetic` block passes options to the writer
(`n`, `image_size`, format-specific ones); `--n` / `--seed` override.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mmbench.errors import ConfigError
from mmbench.schema import TaskConfig

# Bump when generated content changes, so cached synthetic datasets are regenerated.
SYNTH_VERSION = 1
DEFAULT_N = 64
DEFAULT_SEED = 0

WRITERS: dict[str, str] = {
    "wds_retrieval": "mmbench.data.synthetic.retrieval:write_wds_retrieval",
    "karpathy": "mmbench.data.synthetic.retrieval:write_karpathy",
    "glue": "mmbench.data.synthetic.glue:write_glue",
    "wds_classification": "mmbench.data.synthetic.classification:write_wds_classification",
    "image_folder": "mmbench.data.synthetic.classification:write_image_folder",
    "vqa": "mmbench.data.synthetic.vqa:write_vqa",
    "snli_ve": "mmbench.data.synthetic.snli_ve:write_snli_ve",
    "hateful_memes": "mmbench.data.synthetic.hateful_memes:write_hateful_memes",
}


def _writer(fmt: str) -> Any:
    if fmt not in WRITERS:
        raise ConfigError(f"no synthetic writer for data format {fmt!r} (have: {', '.join(sorted(WRITERS))})")
    module, _, attr = WRITERS[fmt].partition(":")
    return getattr(importlib.import_module(module), attr)


def synth_options(task: TaskConfig, fmt: str | None = None, n: int | None = None, seed: int | None = None) -> dict:
    """The writer's keyword arguments: the task's `data.synthetic` block, format-specific sub-blocks, overrides."""
    fmt = fmt or task.data.format
    opts = {k: v for k, v in task.data.synthetic.items() if not isinstance(v, dict)}
    opts.update(task.data.synthetic.get(fmt, {}))  # e.g. synthetic: {karpathy: {flavour: coco}}
    opts.setdefault("split", task.data.split)
    opts["n"] = n if n is not None else opts.get("n", DEFAULT_N)
    opts["seed"] = seed if seed is not None else opts.get("seed", DEFAULT_SEED)
    return {"format": fmt, **opts}


def write(
    task: TaskConfig,
    out: Path,
    fmt: str | None = None,
    n: int | None = None,
    seed: int | None = None,
    *,
    real_shape: bool = False,
) -> Path:
    """Write the task's synthetic dataset into `out` (atomically: a half-written folder never looks complete).
    `real_shape`: the published layout at real image sizes and class counts, `n` records per split (see
    `mmbench.data.synthetic.real_shape`)."""
    opts = synth_options(task, fmt, n, seed)
    writer_of = _writer
    if real_shape:
        from mmbench.data.synthetic import real_shape as rs

        opts, writer_of = rs.options(task, opts, n), rs.writer
    fmt = opts.pop("format")
    writer = writer_of(fmt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        writer(tmp, **opts)
        meta = {"task": task.name, "format": fmt, "synth_version": SYNTH_VERSION, **opts}
        (tmp / "SYNTHETIC.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:
            # Another process (a DDP rank started by torchrun) finished the same deterministic content first.
            if not (out / "SYNTHETIC.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def is_synthetic(root: Path) -> bool:
    return (Path(root) / "SYNTHETIC.json").is_file()


def ensure(task: TaskConfig, cache_dir: Path, fmt: str | None = None) -> Path:
    """The cached synthetic dataset for `task`, written on first use (what `run --data synthetic` reads)."""
    opts = synth_options(task, fmt)
    # Every writer option is part of the folder name: editing a task's `data.synthetic` block (sizes, label kind)
    # must regenerate the data, not silently reuse the old folder.
    digest = hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest()[:8]
    key = f"{opts['format']}-v{SYNTH_VERSION}-n{opts['n']}-s{opts['seed']}-{digest}"
    root = Path(cache_dir) / "synthetic" / task.name / key
    if not (root / "SYNTHETIC.json").is_file():
        write(task, root, fmt)
    return root
