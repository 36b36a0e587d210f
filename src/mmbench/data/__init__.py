"""Dataset readers, one per on-disk format, addressed by the task's `data.format` (lazy imports)."""

from __future__ import annotations

import importlib
from pathlib import Path

from mmbench import paths
from mmbench.data.base import IndexedStream, Reader, Record, decode_image
from mmbench.errors import ConfigError, DataError
from mmbench.schema import TaskConfig

__all__ = ["READERS", "IndexedStream", "Reader", "Record", "dataset_root", "decode_image", "open_reader"]

READERS: dict[str, str] = {
    "wds_retrieval": "mmbench.data.webdataset:WdsRetrievalReader",
    "karpathy": "mmbench.data.karpathy:KarpathyReader",
    "glue": "mmbench.data.glue:GlueReader",
    "wds_classification": "mmbench.data.webdataset:WdsClassificationReader",
    "image_folder": "mmbench.data.image_folder:ImageFolderReader",
    "vqa": "mmbench.data.vqa:VqaReader",
    "snli_ve": "mmbench.data.snli_ve:SnliVeReader",
    "hateful_memes": "mmbench.data.hateful_memes:HatefulMemesReader",
}


def reader_class(fmt: str) -> type[Reader]:
    if fmt not in READERS:
        raise ConfigError(f"unknown data format {fmt!r} (known: {', '.join(sorted(READERS))})")
    module, _, attr = READERS[fmt].partition(":")
    return getattr(importlib.import_module(module), attr)


def dataset_root(task: TaskConfig, data_root: str | Path | None = None) -> Path:
    """`--data-root DIR` -> DIR/<dirname>; else the task's `data.root`; else `$MMBENCH_DATA/<dirname>`
    (default `~/.cache/mmbench/data`)."""
    dirname = task.data.dirname or task.name
    if data_root is not None:
        return Path(data_root).expanduser() / dirname
    if task.data.root:
        return Path(task.data.root).expanduser()
    return paths.data_dir() / dirname


def open_reader(task: TaskConfig, root: Path) -> Reader:
    """The reader for the first of the task's formats whose layout is present under `root`; else a paragraph
    naming, for every accepted format, the files expected and where to get them."""
    formats = [task.data.format, *task.data.alt_formats]
    for fmt in formats:
        cls = reader_class(fmt)
        if cls.detect(root, task):
            reader = cls(root, task)
            reader.check(task.data.split)
            return reader
    layouts = " or ".join(reader_class(f)(root, task).expected() for f in formats)
    where = f" Get it from {task.data.source}." if task.data.source else ""
    raise DataError(
        f"task {task.name!r}: dataset not found at {root}. Expected {layouts}.{where} Point to it with "
        f"--data-root DIR (reads DIR/{task.data.dirname or task.name}) or $MMBENCH_DATA, "
        f"or run on generated data with --data synthetic."
    )
