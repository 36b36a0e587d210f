"""Result files on disk: `<output>/runs/<model folder>/<task>.json`, written atomically, read back for resume.

The model folder is the model's name made safe for a file system (`paths.model_folder`: a preset's name as it is,
a spec's `hf:org/model` as `hf--org--model`); results are read back by their `model` field, never by the folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mmbench.errors import DataError
from mmbench.paths import atomic_write_text, model_folder
from mmbench.results.schema import TaskResult

log = logging.getLogger("mmbench")


def result_path(output: Path, model: str, name: str) -> Path:
    """`name`: the task's result name (`mmbench.schema.result_name`: the task, plus `-<k>shot` for in-context)."""
    return Path(output) / "runs" / model_folder(model) / f"{name}.json"


def artifact_dir(output: Path, model: str) -> Path:
    """Files a protocol writes beside the results (e.g. VQA server submissions): `<output>/artifacts/<model>/`,
    kept out of `runs/` so that every JSON there is a result."""
    return Path(output) / "artifacts" / model_folder(model)


def name_of(result: TaskResult) -> str:
    """The result's name, as `mmbench.schema.result_name` gives it for its task: in-context results add their shots
    and RICES (kept in `details`), so that `vqav2_fewshot` at 0 and at 4 shots are two results."""
    if result.protocol == "retrieval":
        k = (result.details.get("rerank") or {}).get("k") or result.details.get("rerank_k")
        return f"{result.task}-itm{k}" if k else result.task
    if result.protocol == "incontext" and "shots" in result.details:
        rices = "-rices" if result.details.get("demonstrations") == "rices" else ""
        return f"{result.task}-{result.details['shots']}shot{rices}"
    return result.task


def write(output: Path, result: TaskResult) -> Path:
    """Write via a temporary file in the same folder and `os.replace`, so a crash never leaves half a file."""
    text = json.dumps(result.to_json(), indent=2, sort_keys=False, allow_nan=False) + "\n"  # strict JSON
    return atomic_write_text(result_path(output, result.model, name_of(result)), text)


def read(path: Path) -> TaskResult:
    """A result file, validated (`TaskResult.from_json`); any problem is a `DataError` naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return TaskResult.from_json(data, str(path))


def find_complete(output: Path, model: str, name: str, config_hash: str) -> TaskResult | None:
    """The stored result for (model, task) if it is valid and was made with the same config hash. An invalid one
    (damaged, hand-edited, an unreadable schema) is reported and treated as absent: the task runs again and
    overwrites it. Whether the data are still the same is the caller's question (`TaskResult.data_fingerprint`)."""
    path = result_path(output, model, name)
    if not path.is_file():
        return None
    try:
        res = read(path)
    except DataError as e:
        log.warning("%s; running the task again", e)
        return None
    return res if res.config_hash == config_hash else None


def read_all(output: Path) -> list[TaskResult]:
    """Every result under `<output>/runs/`, sorted by (model, task); a malformed file is an error naming it."""
    return [read(p) for p in sorted((Path(output) / "runs").glob("*/*.json"))]
