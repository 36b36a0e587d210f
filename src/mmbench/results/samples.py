"""Per-sample predictions (`mmbench run --log-samples`): `<output>/samples/<model>/<result name>.jsonl`.

One JSON object a line, one line per evaluated sample, in sample-index order: `index` (the sample's position in the
split), the dataset's own `id` and an input reference where the reader has them (`image` path, `text` truncated),
`prediction`, `target`, and `correct` and/or `score`; the columns of each protocol are listed in its `sample_rows`.
The rows are built from the very predictions the result's metrics were computed from (gathered across ranks and
de-duplicated, as the metrics are), so a metric re-computed from them equals the result's.

Kept beside `runs/`, not in it: every JSON under `runs/` is a result. Written like a result: only by global rank
zero, to a hidden temporary file in the same folder and then `os.replace`, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmbench.errors import DataError
from mmbench.paths import atomic_write, model_folder

log = logging.getLogger("mmbench")


def samples_path(output: Path, model: str, name: str) -> Path:
    """`name`: the result's name (`mmbench.schema.result_name`), so a samples file pairs with one result file."""
    return Path(output) / "samples" / model_folder(model) / f"{name}.jsonl"


def per_seed(path: Path, seed: int) -> Path:
    """The samples file of one seed of a several-seed result (`<name>.seed<N>.jsonl` beside `path`)."""
    return path.with_name(f"{path.stem}.seed{seed}.jsonl")


def _finite(value: Any) -> Any:
    """Strict JSON: a non-finite float (an undefined score) is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write `rows` (iterated once, written as they come) atomically to `path`; returns how many."""
    count = 0

    def dump(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            for row in rows:
                f.write(json.dumps({k: _finite(v) for k, v in row.items()}, ensure_ascii=False, allow_nan=False))
                f.write("\n")
                count += 1

    atomic_write(path, dump)
    log.info("per-sample predictions: %s (%d rows)", path, count)
    return count


def read(path: Path) -> list[dict[str, Any]]:
    """Every row of a samples file; a malformed line is a `DataError` naming file and line."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return rows


def discard_stale(path: Path) -> None:
    """Remove the samples file of a result that was just written again without `--log-samples`: it describes the
    run before, and a samples file is only ever the predictions behind the result beside it."""
    if path.is_file():
        path.unlink()
        log.info("%s described an earlier run of this result: removed (use --log-samples to log again)", path)
