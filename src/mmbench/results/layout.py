"""The leaderboard's inputs that are data, not runs: the Table-4 layout and the paper's reported columns.

`reported_dirs(extra)` -> the built-in reported folder (shipped with mmbench: `results/reported/` in a checkout,
package data once installed), then the user's `extra` folder, which adds columns or replaces same-named files;
`load_layout(path)` / `layout_of(dirs)` -> `Layout` (ordered score rows and domains; the last `table4.yaml` wins);
`load_reported(dirs, layout)` -> one `Reported` column per `<name>.json` that has Table-4 `scores`, in the layout's
order; `incontext_layout_of(dirs)` -> `IncontextLayout` (the few-shot section's tasks, shots and demonstration
kinds, from `incontext.yaml`; None when no folder has one) and `load_reported_incontext(dirs, layout)` -> one
`ReportedIncontext` per `<name>.json` that has an `incontext` block. A reported file holds `scores`, `incontext` or
both. All validate what they read and name the file and key of anything malformed (`ConfigError` for the layout,
`DataError` for a reported file), because a typo here would silently move a published number.

A reported file may say which split each task's number was measured on (`splits: {task: split | null}`, in the
split names of mmbench's task YAMLs; null: the source does not say), so that the table can flag a measured number
from another split (VQAv2: ours val2014, the paper's test-dev2015).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmbench.errors import ConfigError, DataError

LAYOUT_FILE = "table4.yaml"
INCONTEXT_FILE = "incontext.yaml"
ZEROSHOT_FILE = "zeroshot.yaml"  # read by zeroshot_table
_ROW_KEYS = ("domain", "task", "score", "label", "metric")
_DOMAIN_KEYS = ("name", "heading", "average")


@dataclass(frozen=True)
class Row:
    """One number that enters a domain average: `TaskResult.scores[score]` of `task`."""

    domain: str
    task: str
    score: str
    label: str  # what the table prints in its first column, e.g. "Flickr30K TR@1"
    metric: str  # what the table prints in its metric column, e.g. "R@1"


@dataclass(frozen=True)
class Domain:
    name: str  # "language" | "vision" | "multimodal", as in TaskResult.domain
    heading: str
    average: str  # the average row's label, e.g. "NLP Avg"


@dataclass(frozen=True)
class Layout:
    path: Path
    source: str
    errata: str
    domains: tuple[Domain, ...]
    rows: tuple[Row, ...]
    reported: tuple[str, ...]  # reported-column file stems, in column order

    @property
    def tasks(self) -> set[str]:
        return {r.task for r in self.rows}

    def rows_of(self, domain: str) -> list[Row]:
        return [r for r in self.rows if r.domain == domain]


@dataclass(frozen=True)
class Reported:
    """A column of published numbers: `scores[task][score_key]` on the 0-100 scale."""

    path: Path
    name: str  # column header
    source: str  # one line of provenance for the table's notes
    scores: dict[str, dict[str, float]]
    averages: dict[str, float] | None  # as printed in the paper, when the file gives them
    splits: dict[str, str | None] | None = None  # task -> split its numbers were measured on (None: not stated)


@dataclass(frozen=True)
class IncontextRow:
    """One task of the in-context section: `TaskResult.scores[score]` of `task`, one column per shot count."""

    task: str
    score: str
    label: str  # e.g. "VQAv2"
    metric: str  # e.g. "VQA accuracy"


@dataclass(frozen=True)
class IncontextLayout:
    path: Path
    shots: tuple[int, ...]  # the columns every task table has (a measured shot count outside them adds one)
    demonstrations: dict[str, str]  # `details.demonstrations` value -> row label, in row order
    rows: tuple[IncontextRow, ...]

    @property
    def tasks(self) -> set[str]:
        return {r.task for r in self.rows}


@dataclass(frozen=True)
class ReportedCell:
    mean: float
    std: float | None  # None: the source gives no spread
    trials: int | None  # how many runs the mean is over, when the source says


@dataclass(frozen=True)
class ReportedIncontext:
    """Published few-shot numbers of one model: `cells[(task, demonstrations)][shots]`."""

    path: Path
    name: str  # row label
    source: str  # one line of provenance for the section's notes
    note: str  # what a reader must know to compare (splits, how the spread was computed), or ""
    decimals: int  # printed as the source prints them, so 49.0 is not shown as a more precise 49.00
    cells: dict[tuple[str, str], dict[int, ReportedCell]]


def default_reported_dir() -> Path:
    """The Table-4 layout and the paper's numbers that ship with mmbench."""
    from mmbench.config import builtin_registry

    builtin = builtin_registry()
    if builtin is None or not (builtin.reported / LAYOUT_FILE).is_file():
        raise ConfigError(
            "the paper's reported numbers are not installed with mmbench (expected results/reported/ in a "
            "checkout or mmbench/registry/reported/ in the package); pass --reported DIR holding a table4.yaml"
        )
    return builtin.reported


def reported_dirs(extra: Path | None = None) -> list[Path]:
    """The built-in reported folder, then `extra` (a user's folder of `<name>.json` columns and/or a
    `table4.yaml`), which adds columns and replaces built-in files of the same name."""
    if extra is None:
        return [default_reported_dir()]
    extra = Path(extra)
    if not extra.is_dir():
        raise DataError(f"{extra}: no such folder of reported numbers")
    if not any(extra.glob("*.json")) and not any(
        (extra / f).is_file() for f in (LAYOUT_FILE, INCONTEXT_FILE, ZEROSHOT_FILE)
    ):
        raise DataError(
            f"{extra}: holds no reported <name>.json, no {LAYOUT_FILE}, {INCONTEXT_FILE} or {ZEROSHOT_FILE}"
        )
    try:
        builtin = default_reported_dir()
    except ConfigError:
        if (extra / LAYOUT_FILE).is_file():
            return [extra]  # nothing shipped to add to: the user's folder is the whole story
        raise
    return [builtin] if extra.resolve() == builtin.resolve() else [builtin, extra]


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A layout file's YAML mapping; a missing file, bad YAML or a non-mapping is one line naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return data


def layout_of(dirs: Sequence[Path]) -> Layout:
    """The layout of the last folder in `dirs` that has one."""
    for d in reversed(dirs):
        if (Path(d) / LAYOUT_FILE).is_file():
            return load_layout(Path(d) / LAYOUT_FILE)
    return load_layout(Path(dirs[0]) / LAYOUT_FILE)  # names the missing file


def load_layout(path: Path) -> Layout:
    path = Path(path)
    data = read_mapping(path, "leaderboard layout")
    domains = tuple(
        Domain(**_strings(path, f"domains[{i}]", d, _DOMAIN_KEYS)) for i, d in enumerate(_list(path, data, "domains"))
    )
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: key 'domains': a domain name is repeated ({names})")
    rows = tuple(Row(**_strings(path, f"rows[{i}]", r, _ROW_KEYS)) for i, r in enumerate(_list(path, data, "rows")))
    seen: set[tuple[str, str]] = set()
    for i, row in enumerate(rows):
        if row.domain not in names:
            raise ConfigError(f"{path}: key 'rows[{i}].domain': unknown domain {row.domain!r} (known: {names})")
        if (row.task, row.score) in seen:
            raise ConfigError(f"{path}: key 'rows[{i}]': {row.task}/{row.score} appears twice")
        seen.add((row.task, row.score))
    for name in names:
        if not any(r.domain == name for r in rows):
            raise ConfigError(f"{path}: key 'domains': domain {name!r} has no rows, so it has no average")
    reported = data.get("reported", [])
    if not isinstance(reported, list) or not all(isinstance(s, str) for s in reported):
        raise ConfigError(f"{path}: key 'reported': expected a list of file stems")
    return Layout(
        path=path,
        source=str(data.get("source", "")),
        errata=str(data.get("errata", "")),
        domains=domains,
        rows=rows,
        reported=tuple(reported),
    )


def load_reported(reported_dir: Path | Sequence[Path], layout: Layout) -> list[Reported]:
    """Every `*.json` with Table-4 `scores` in the folder(s), a later folder's file replacing an earlier one of the
    same name: the layout's `reported` files first, in its order, then the rest by name. Files holding only
    in-context numbers are validated here too (`name`, `source`) and left to `load_reported_incontext`."""
    dirs = _dirs(reported_dir)
    found = _reported_files(dirs)
    for stem in layout.reported:
        if stem not in found:
            where = " or ".join(str(d) for d in dirs)
            raise DataError(f"{layout.path}: key 'reported': {stem}.json does not exist in {where}")
    order = list(layout.reported) + sorted(set(found) - set(layout.reported))
    columns = []
    for stem in order:
        data = _read_reported_json(found[stem])
        if "scores" in data:
            columns.append(_read_reported(found[stem], data, layout))
        elif stem in layout.reported:
            raise DataError(f"{found[stem]}: missing key 'scores' ({layout.path.name} lists it as a Table-4 column)")
    return columns


def _dirs(reported_dir: Path | Sequence[Path]) -> list[Path]:
    return [Path(reported_dir)] if isinstance(reported_dir, str | Path) else [Path(d) for d in reported_dir]


def _reported_files(dirs: list[Path]) -> dict[str, Path]:
    """stem -> path of every `*.json`, a later folder's file replacing an earlier one's of the same name."""
    found: dict[str, Path] = {}
    for d in dirs:
        found.update({p.stem: p for p in sorted(d.glob("*.json"))})
    return found


def _read_reported_json(path: Path) -> dict[str, Any]:
    """The parsed file with its `name` and `source` checked, and at least one block of numbers."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    for key in ("name", "source"):
        if key not in data:
            raise DataError(f"{path}: missing key {key!r}")
    if "scores" not in data and "incontext" not in data and "zeroshot" not in data:
        raise DataError(
            f"{path}: missing key 'scores' (Table-4 numbers), 'incontext' (few-shot numbers) or 'zeroshot' (zero-shot)"
        )
    if not isinstance(data["name"], str) or not data["name"]:
        raise DataError(f"{path}: key 'name': expected the column header as a non-empty string")
    return data


def _read_reported(path: Path, data: dict[str, Any], layout: Layout) -> Reported:
    scores = data["scores"]
    if not isinstance(scores, dict):
        raise DataError(f"{path}: key 'scores': expected {{task: {{score_key: number}}}}")
    unknown = sorted(set(scores) - layout.tasks)
    if unknown:
        raise DataError(f"{path}: key 'scores.{unknown[0]}': task is not a row of {layout.path.name}")
    for row in layout.rows:
        task_scores = scores.get(row.task)
        if not isinstance(task_scores, dict) or row.score not in task_scores:
            raise DataError(f"{path}: missing key 'scores.{row.task}.{row.score}' (row {row.label!r})")
        _number(path, f"scores.{row.task}.{row.score}", task_scores[row.score])
    averages = data.get("averages")
    if averages is not None:
        keys = [d.name for d in layout.domains] + ["macro"]
        if not isinstance(averages, dict) or set(averages) != set(keys):
            raise DataError(f"{path}: key 'averages': expected exactly the keys {keys}")
        for key, value in averages.items():
            _number(path, f"averages.{key}", value)
    return Reported(
        path=path,
        name=data["name"],
        source=_source_line(data["source"]),
        scores={t: {k: float(v) for k, v in s.items()} for t, s in scores.items()},
        averages={k: float(v) for k, v in averages.items()} if averages is not None else None,
        splits=_splits(path, data.get("splits"), layout),
    )


def _splits(path: Path, splits: Any, layout: Layout) -> dict[str, str | None] | None:
    """`{task: split name | null}` covering every task of the layout, or None when the file says nothing."""
    if splits is None:
        return None
    if not isinstance(splits, dict):
        raise DataError(f"{path}: key 'splits': expected {{task: split name or null}}")
    unknown = sorted(set(splits) - layout.tasks)
    if unknown:
        raise DataError(f"{path}: key 'splits.{unknown[0]}': task is not a row of {layout.path.name}")
    for task in sorted(layout.tasks):
        if task not in splits:
            raise DataError(f"{path}: missing key 'splits.{task}' (null if the source does not say)")
        value = splits[task]
        if value is not None and (not isinstance(value, str) or not value):
            raise DataError(f"{path}: key 'splits.{task}': {value!r} is neither a split name nor null")
    return dict(splits)


def _source_line(source: Any) -> str:
    """A dict like {paper, arxiv, table, column} becomes "paper, arXiv 2112.04482, Table 4, column ..."."""
    if not isinstance(source, dict):
        return str(source)
    parts = [str(source["paper"])] if "paper" in source else []
    parts += [f"arXiv {source['arxiv']}"] if "arxiv" in source else []
    parts += [str(source["table"])] if "table" in source else []
    parts += [f'column "{source["column"]}"'] if "column" in source else []
    return ", ".join(parts)


def incontext_layout_of(dirs: Sequence[Path]) -> IncontextLayout | None:
    """The in-context layout of the last folder in `dirs` that has one; None when none has."""
    for d in reversed(dirs):
        if (Path(d) / INCONTEXT_FILE).is_file():
            return load_incontext_layout(Path(d) / INCONTEXT_FILE)
    return None


def load_incontext_layout(path: Path) -> IncontextLayout:
    path = Path(path)
    data = read_mapping(path, "in-context layout")
    shots = _list(path, data, "shots")
    if not all(_is_count(s) for s in shots) or len(set(shots)) != len(shots):
        raise ConfigError(f"{path}: key 'shots': expected distinct counts (integers >= 0), got {shots}")
    demos = data.get("demonstrations")
    if not isinstance(demos, dict) or not demos or not all(isinstance(v, str) and v for v in demos.values()):
        raise ConfigError(f"{path}: key 'demonstrations': expected {{value in results: row label}}")
    rows = tuple(
        IncontextRow(**_strings(path, f"tasks[{i}]", r, ("task", "score", "label", "metric")))
        for i, r in enumerate(_list(path, data, "tasks"))
    )
    names = [r.task for r in rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: key 'tasks': a task appears twice ({names})")
    return IncontextLayout(path=path, shots=tuple(sorted(shots)), demonstrations=dict(demos), rows=rows)


def load_reported_incontext(
    reported_dir: Path | Sequence[Path], layout: IncontextLayout | None
) -> list[ReportedIncontext]:
    """One entry per `*.json` with an `incontext` block, by file name (a later folder's file replacing an earlier
    one of the same name). Its shape: `{task: {demonstrations: {"mean": {shots: x}, "std": {shots: s}}}}`, shots as
    strings (JSON keys); `std` optional, and a subset of `mean`'s shots. Optional beside it: `incontext_source`
    (replaces `source` for these numbers), `incontext_note` and `incontext_decimals` (default 2)."""
    out = []
    for _, path in sorted(_reported_files(_dirs(reported_dir)).items()):
        data = _read_reported_json(path)
        if "incontext" not in data:
            continue
        if layout is None:
            raise ConfigError(f"{path}: key 'incontext': no {INCONTEXT_FILE} beside it or in mmbench to lay it out")
        decimals = data.get("incontext_decimals", 2)
        if not _is_count(decimals):
            raise DataError(f"{path}: key 'incontext_decimals': {decimals!r} is not a count of decimals")
        note = data.get("incontext_note", "")
        if not isinstance(note, str):
            raise DataError(f"{path}: key 'incontext_note': expected a string")
        out.append(
            ReportedIncontext(
                path=path,
                name=data["name"],
                source=_source_line(data.get("incontext_source", data["source"])),
                note=note,
                decimals=decimals,
                cells=_incontext_cells(path, data["incontext"], layout),
            )
        )
    return out


def _incontext_cells(path: Path, block: Any, layout: IncontextLayout) -> dict[tuple[str, str], dict[int, ReportedCell]]:
    if not isinstance(block, dict) or not block:
        raise DataError(f"{path}: key 'incontext': expected {{task: {{demonstrations: {{mean: {{shots: number}}}}}}}}")
    cells: dict[tuple[str, str], dict[int, ReportedCell]] = {}
    for task, by_demo in block.items():
        if task not in layout.tasks:
            raise DataError(f"{path}: key 'incontext.{task}': task is not in {layout.path.name}")
        if not isinstance(by_demo, dict) or not by_demo:
            raise DataError(f"{path}: key 'incontext.{task}': expected {{demonstrations: {{mean: ..., std: ...}}}}")
        for demo, numbers in by_demo.items():
            where = f"incontext.{task}.{demo}"
            if demo not in layout.demonstrations:
                known = list(layout.demonstrations)
                raise DataError(f"{path}: key '{where}': unknown demonstrations (known: {known})")
            if not isinstance(numbers, dict) or not isinstance(numbers.get("mean"), dict) or not numbers["mean"]:
                raise DataError(f"{path}: missing key '{where}.mean' ({{shots: number}})")
            extra = sorted(set(numbers) - {"mean", "std", "trials"})
            if extra:
                raise DataError(f"{path}: key '{where}.{extra[0]}': unknown key (known: mean, std, trials)")
            std = numbers.get("std", {})
            if not isinstance(std, dict) or set(std) - set(numbers["mean"]):
                raise DataError(f"{path}: key '{where}.std': expected {{shots: number}} for shots that have a mean")
            if any(_number(path, f"{where}.std.{k}", v) < 0 for k, v in std.items()):
                raise DataError(f"{path}: key '{where}.std': a standard deviation is negative")
            trials = numbers.get("trials")
            if trials is not None and not (_is_count(trials) and trials > 0):
                raise DataError(f"{path}: key '{where}.trials': {trials!r} is not a positive count")
            cells[(task, demo)] = {
                _shots(path, f"{where}.mean", k): ReportedCell(
                    mean=_number(path, f"{where}.mean.{k}", v),
                    std=float(std[k]) if k in std else None,
                    trials=trials,
                )
                for k, v in numbers["mean"].items()
            }
    return cells


def _shots(path: Path, where: str, key: str) -> int:
    if not key.isdigit():
        raise DataError(f"{path}: key '{where}.{key}': a shot count must be an integer >= 0")
    return int(key)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _list(path: Path, data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: key {key!r}: expected a non-empty list")
    return value


def _strings(path: Path, where: str, item: Any, keys: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(item, dict):
        raise ConfigError(f"{path}: key {where!r}: expected a mapping with keys {list(keys)}")
    extra = sorted(set(item) - set(keys))
    if extra:
        raise ConfigError(f"{path}: key '{where}.{extra[0]}': unknown key (known: {list(keys)})")
    for key in keys:
        if not isinstance(item.get(key), str) or not item[key]:
            raise ConfigError(f"{path}: key '{where}.{key}': expected a non-empty string")
    return {k: item[k] for k in keys}


def _number(path: Path, key: str, value: Any) -> float:
    # bool is an int in Python; a `true` where a score belongs is a typo, not 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{path}: key {key!r}: {value!r} is not a finite number")
    return float(value)
