"""Where one (model, task) stands before it runs: the identity of what it would compute (config hash over the
model, the task and the run's seeds; a fingerprint of the data it reads) and whether a stored result still stands.
`mmbench.api.evaluate` skips on it and `mmbench.launch` plans with it: one decision, made in one place."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmbench import seeds as seeding
from mmbench.config import config_hash
from mmbench.errors import DataError
from mmbench.results import store
from mmbench.results.schema import TaskResult
from mmbench.schema import ModelConfig, TaskConfig, result_name

log = logging.getLogger("mmbench")


@dataclass(frozen=True)
class Standing:
    """Where one (model, task) stands before it runs: its identity (config hash, data) and the stored result if it
    still stands (`result`), else why it must run (`reason`: new, config changed, data changed, unreadable result).
    `evaluate` skips on it and `mmbench.launch` plans with it: one decision, made in one place."""

    run_info: dict[str, Any]
    config_hash: str
    data_root: Path
    data_source: str
    data_fingerprint: str | None  # None: the data cannot be opened (or, planning, are not generated yet)
    result: TaskResult | None
    reason: str  # "up to date" when `result` is set
    seeds: list[int]  # the seeds this task runs (several only where a seed moves its numbers)

    @property
    def up_to_date(self) -> bool:
        return self.result is not None


def standing(
    mcfg: ModelConfig,
    tcfg: TaskConfig,
    output: Path,
    data: str,
    data_root: str | Path | None,
    cache: Path,
    *,
    seeds: list[int],
    limit: int | None,
    precision: str | None,
    prepare: bool = True,
) -> Standing:
    """The stored result stands when it is valid, has the same config hash, and (unless n/a, which no data can
    change) was made on the same data: repaired or replaced data must be evaluated again, not reported from before.
    `seeds` (`mmbench.seeds.resolve`): the run's; the task runs all of them or, where they cannot move its numbers,
    the first. `prepare=False` (a dry run) never writes synthetic data: data not generated yet are data that will
    change."""
    root, source = find_data_root(tcfg, data, data_root, cache, prepare)
    task_seeds = seeding.task_seeds(tcfg, root, seeds)
    run_info = seeding.run_info(task_seeds, limit, data, precision)
    chash = config_hash(mcfg, tcfg, run_info)
    data_fp = data_fingerprint(tcfg, root, source == "synthetic")
    result, reason = stored_result(store.result_path(output, mcfg.name, result_name(tcfg)), chash, data_fp)
    return Standing(run_info, chash, root, source, data_fp, result, reason, task_seeds)


def stored_result(path: Path, chash: str, data_fp: str | None) -> tuple[TaskResult | None, str]:
    """(the result at `path` if it stands, else None; "up to date" or why not). A damaged result is reported and
    treated as absent: the task runs again and overwrites it."""
    if not path.is_file():
        return None, "new"
    try:
        stored = store.read(path)
    except DataError as e:
        log.warning("%s; running the task again", e)
        return None, "unreadable result"
    if stored.config_hash != chash:
        return None, "config changed"
    if stored.status != "n/a" and (data_fp is None or stored.data_fingerprint != data_fp):
        return None, "data changed"
    return stored, "up to date"


def _splits_read(task: TaskConfig, synthetic: bool) -> list[str]:
    """Every split the task's protocol reads: what its result depends on."""
    if task.protocol == "linear_probe":
        from mmbench.protocols.linear_probe import VAL_SPELLINGS

        lp = task.linear_probe
        # The probe validates on whichever spelling of its split the data hold (absent ones are skipped below).
        vals = [lp.val_split, *VAL_SPELLINGS] if lp.val_split in VAL_SPELLINGS else [lp.val_split]
        return list(dict.fromkeys([lp.train_split, *(v for v in vals if v), task.data.split]))
    if task.protocol == "finetune":
        from mmbench.protocols.finetune import effective_params

        ft = effective_params(task, synthetic)
        evals = [ft.train_split, ft.val_split or task.data.split, task.data.split, *ft.eval_splits.values()]
        return list(dict.fromkeys([*evals, *ft.predict_splits]))
    if task.protocol == "incontext":  # demonstrations come from the training split
        return list(dict.fromkeys([task.incontext.train_split, task.data.split]))
    return [task.data.split]


def data_fingerprint(task: TaskConfig, root: Path, synthetic: bool = False) -> str | None:
    """A cheap identity of the data a task reads under `root`: its reader's `fingerprint(split)` (file names,
    sizes, modification times; no content is read) for every split the task reads; for a reader without one, the
    same over every file under `root`. None when the data cannot be opened (the protocol reports what is wrong)."""
    from mmbench.data import reader_class

    try:
        for fmt in [task.data.format, *task.data.alt_formats]:
            cls = reader_class(fmt)
            if cls.detect(root, task):
                break
        else:
            return None
        parts = _split_fingerprints(cls(root, task), _splits_read(task, synthetic))
        if parts is None:  # a reader without its own fingerprint (yet)
            parts = [f"{fmt}/files={_tree_fingerprint(root)}"]
    except (DataError, OSError):
        return None
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _split_fingerprints(reader: Any, splits: list[str]) -> list[str] | None:
    fingerprint = getattr(reader, "fingerprint", None)
    if fingerprint is None:
        return None
    try:
        return [f"{reader.format}/{split}={fingerprint(split)}" for split in splits if _has_split(reader, split)]
    except NotImplementedError:
        return None


def _has_split(reader: Any, split: str) -> bool:
    """False only when the reader knows the split is absent (e.g. a validation split the published files lack, for
    which the probe holds out part of train): absence is part of the fingerprint by omission."""
    try:
        return reader.has_split(split)
    except NotImplementedError:
        return True


def _tree_fingerprint(root: Path) -> str:
    """(relative path, size, mtime) of every file under `root`, as the readers' fingerprints do per split."""
    from mmbench.data.classification import files_fingerprint

    files = sorted(Path(d) / f for d, _, names in os.walk(root) for f in names)
    return files_fingerprint(files, Path(root))


def find_data_root(
    task: TaskConfig, data: str, data_root: str | Path | None, cache: Path, prepare: bool = True
) -> tuple[Path, str]:
    """The dataset folder and its source. A folder written by `mmbench data synth` is labelled synthetic even
    when passed as real data, so generated numbers can never enter the real leaderboard. `prepare=False`: where the
    synthetic data are or would be, without writing them."""
    from mmbench.data import dataset_root, synthetic

    if data == "synthetic":
        return (synthetic.ensure(task, cache) if prepare else synthetic.cached_root(task, cache)), "synthetic"
    root = dataset_root(task, data_root)
    return root, "synthetic" if synthetic.is_synthetic(root) else "real"
