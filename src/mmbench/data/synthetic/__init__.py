"""`mmbench data synth`: small deterministic datasets in each task's real on-disk format, from the scene world.

A writer is registered per format (the same names as the readers in `mmbench.data.READERS`), addressed by string
so that importing this package stays cheap. The task's `data.synthetic` block passes options to the writer
(`n`, `image_size`, format-specific ones); `--n` / `--seed` override.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

from mmbench import paths
from mmbench.errors import ConfigError, OutputError
from mmbench.schema import TaskConfig

# Bump when generated content changes, so cached synthetic datasets are regenerated.
SYNTH_VERSION = 1
DEFAULT_N = 64
DEFAULT_SEED = 0
MARKER = "SYNTHETIC.json"  # written last into every generated dataset: what `write` may replace

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


def _writer_params(fmt: str) -> list[str]:
    params = inspect.signature(_writer(fmt)).parameters.values()
    return [p.name for p in params if p.kind is not p.VAR_KEYWORD and p.name != "out"]


def check_options(task: TaskConfig) -> None:
    """Every key of the task's `data.synthetic` block is an option of a writer of its formats (the keys of a
    format's own sub-block, of that format's writer): a typo must not silently fall back to a default."""
    formats = [task.data.format, *task.data.alt_formats]
    shared = sorted({name for fmt in formats if fmt in WRITERS for name in _writer_params(fmt)})
    for key, value in task.data.synthetic.items():
        if key == "finetune":  # the recipe override, checked with the task's config
            continue
        if not isinstance(value, dict):
            _check_key(task, f"data.synthetic.{key}", key, shared)
        elif key in WRITERS:
            for sub in value:
                _check_key(task, f"data.synthetic.{key}.{sub}", sub, _writer_params(key))


def _check_key(task: TaskConfig, full_key: str, key: str, known: list[str]) -> None:
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f" (known: {', '.join(known)})"
        raise ConfigError(f"task {task.name!r}: key {full_key!r}: not an option of the synthetic writer{hint}")


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
    replace: bool = True,
    real_shape: bool = False,
) -> Path:
    """Write the task's synthetic dataset into `out`, atomically: generated in a temporary folder beside it and
    renamed, so a half-written folder never looks complete, and a kill leaves only a temporary that the next write
    removes. An existing `out` is replaced only when it is a synthetic dataset mmbench wrote (`replace=False`
    keeps it: another process, e.g. a DDP rank, finished the same content first); anything else is refused.
    `real_shape`: the published layout at real image sizes and class counts, `n` records per split (see
    `mmbench.data.synthetic.real_shape`)."""
    check_options(task)
    opts = synth_options(task, fmt, n, seed)
    writer_of = _writer
    if real_shape:
        from mmbench.data.synthetic import real_shape as rs

        opts, writer_of = rs.options(task, opts, n), rs.writer
    fmt = opts.pop("format")
    writer = writer_of(fmt)
    out = Path(out)
    _check_replaceable(out)
    paths.make_folder(out.parent, f"cannot write synthetic dataset {out}")
    paths.remove_stale_temps(out)
    tmp = paths.temp_path(out)
    try:
        tmp.mkdir(mode=0o777)  # the kernel applies the umask (mkdtemp would make it 0700)
        writer(tmp, **opts)
        meta = {"task": task.name, "format": fmt, "synth_version": SYNTH_VERSION, **opts}
        (tmp / MARKER).write_text(json.dumps(meta, indent=1, default=str) + "\n")
        _install(tmp, out, replace)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write synthetic dataset {out}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _written_by_mmbench(folder: Path) -> bool:
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "synth_version" in meta


def _check_replaceable(out: Path) -> None:
    """Only a synthetic dataset mmbench wrote, or an empty folder, may be replaced: `--out ~/data` must never
    delete a user's folder."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink() and (_written_by_mmbench(out) or not any(out.iterdir())):
        return
    what = "a file" if not out.is_dir() else "a folder that is not a synthetic dataset written by mmbench"
    raise OutputError(
        f"refusing to replace {out}: it is {what} (no {MARKER}); choose another --out or remove it yourself"
    )


def _install(tmp: Path, out: Path, replace: bool) -> None:
    """Move the finished `tmp` to `out`; an old dataset there is moved aside first and removed after, so that a
    kill at any point leaves either dataset complete (plus, at worst, a temporary for the next write to remove)."""
    try:
        os.rename(tmp, out)  # succeeds when `out` is absent or an empty folder
        return
    except OSError:
        if not _written_by_mmbench(out):
            _check_replaceable(out)  # something else appeared meanwhile: refuse it
            raise
        if not replace:
            return
    old = paths.temp_path(out)
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def is_synthetic(root: Path) -> bool:
    return (Path(root) / MARKER).is_file()


def cached_root(task: TaskConfig, cache_dir: Path, fmt: str | None = None) -> Path:
    """Where `ensure` keeps the synthetic dataset for `task`, whether or not it is written yet (a dry run asks)."""
    opts = synth_options(task, fmt)
    # Every writer option is part of the folder name: editing a task's `data.synthetic` block (sizes, label kind)
    # must regenerate the data, not silently reuse the old folder.
    digest = hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest()[:8]
    key = f"{opts['format']}-v{SYNTH_VERSION}-n{opts['n']}-s{opts['seed']}-{digest}"
    return Path(cache_dir) / "synthetic" / task.name / key


def ensure(task: TaskConfig, cache_dir: Path, fmt: str | None = None) -> Path:
    """The cached synthetic dataset for `task`, written on first use (what `run --data synthetic` reads)."""
    root = cached_root(task, cache_dir, fmt)
    if (root / MARKER).is_file():
        paths.remove_stale_temps(root)  # leftovers of a writer killed while another one finished
    else:
        write(task, root, fmt, replace=False)
    return root
