"""The leaderboard's zero-shot classification section: results of protocol `zeroshot`, a row per dataset (the 22
vision datasets of Table 4, laid out by `zeroshot.yaml`) and a column per model, beside published zero-shot numbers.

    layout = layout_of(dirs)                           # -> ZeroshotLayout | None (no zeroshot.yaml anywhere)
    reported = load_reported(dirs, layout)             # -> a ReportedZeroshot per `<name>.json` with `zeroshot`
    section = render_section(runs, layout, reported)   # -> Section(markdown, csv) | None when no runs

`table.render` calls `render_section` with every zero-shot result it found (`Run`: the file, the result, whether it
is reference-grade and the column header Table 4 would give it) and puts the section between Table 4 and the
in-context section: zero-shot classification scores the same 22 datasets as Table 4's vision rows, so it reads
best right below them. Its CSV is a separate file (`LEADERBOARD-zeroshot.csv`) so that LEADERBOARD.csv keeps its
columns. Nothing here touches Table 4: zero-shot results never enter its averages.

The section's average is Table 4's rule applied to its one domain: the mean of every layout row, a status-`n/a`
result (a model without a contrastive space) counting 0, and no average at all while any row has no number.
A reported file's block: `zeroshot: {task: number}`, `zeroshot_metrics: {task: score key | null}` (the metric the
source reports, null where not recorded; a number is footnoted when this is not the row's metric), optional
`zeroshot_empty: {task: why the cell is empty}`, `zeroshot_source` (replaces `source`), `zeroshot_note`.
Malformed inputs raise `DataError` / `ConfigError` naming the file and key.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmbench.errors import ConfigError, DataError
from mmbench.results.cells import NA, NOT_RUN, Run, Section, fmt, md
from mmbench.results.layout import (
    ZEROSHOT_FILE,
    _dirs,
    _list,
    _number,
    _read_reported_json,
    _reported_files,
    _source_line,
    _strings,
    read_mapping,
)

ZEROSHOT = "zeroshot"  # TaskResult.protocol of zero-shot classification results
LAYOUT_FILE = ZEROSHOT_FILE
HEADING = "Zero-shot classification"
OTHER_HEADING = f"{HEADING}, not comparable to the paper: synthetic data, `--limit` subsets or random weights"
CSV_FIELDS = ("table", "part", "task", "score_key", "row", "metric", "column", "value", "note")


@dataclass(frozen=True)
class ZeroshotRow:
    task: str
    score: str  # the key of TaskResult.scores: the linear-probe task's primary
    label: str  # e.g. "FGVC Aircraft"
    metric: str  # e.g. "mean per class"


@dataclass(frozen=True)
class ZeroshotLayout:
    path: Path
    source: str
    rows: tuple[ZeroshotRow, ...]

    @property
    def tasks(self) -> set[str]:
        return {r.task for r in self.rows}


@dataclass(frozen=True)
class ReportedZeroshot:
    """Published zero-shot numbers of one model: `scores[task]` on the 0-100 scale."""

    path: Path
    name: str  # column header
    source: str  # one line of provenance for the section's notes
    note: str  # what a reader must know to compare, or ""
    scores: dict[str, float]
    metrics: dict[str, str | None]  # task -> the score key the source reports (None: it does not say)
    empty: dict[str, str]  # task -> why the cell is empty (not in the source's table, not transcribed)


@dataclass
class _Column:
    header: str
    values: dict[str, float | str] = field(default_factory=dict)  # task -> the row's score | NA
    notes: dict[str, str] = field(default_factory=dict)  # task -> footnote (n/a reason, metric, empty cell)
    paths: dict[str, Path] = field(default_factory=dict)
    average: float | None = None


# --- data: the layout and the reported blocks --------------------------------------------------------------------


def layout_of(dirs: Sequence[Path]) -> ZeroshotLayout | None:
    """The zero-shot layout of the last folder in `dirs` that has one; None when none has."""
    for d in reversed(list(dirs)):
        if (Path(d) / LAYOUT_FILE).is_file():
            return load_layout(Path(d) / LAYOUT_FILE)
    return None


def load_layout(path: Path) -> ZeroshotLayout:
    path = Path(path)
    data = read_mapping(path, "zero-shot layout")
    keys = ("task", "score", "label", "metric")
    rows = tuple(ZeroshotRow(**_strings(path, f"rows[{i}]", r, keys)) for i, r in enumerate(_list(path, data, "rows")))
    names = [r.task for r in rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: key 'rows': a task appears twice ({names})")
    return ZeroshotLayout(path=path, source=str(data.get("source", "")), rows=rows)


def load_reported(dirs: Path | Sequence[Path], layout: ZeroshotLayout | None) -> list[ReportedZeroshot]:
    """One entry per `*.json` with a `zeroshot` block, by file name (a later folder's file replacing an earlier one
    of the same name)."""
    out = []
    for _, path in sorted(_reported_files(_dirs(dirs)).items()):
        data = _read_reported_json(path)
        if ZEROSHOT not in data:
            continue
        if layout is None:
            raise ConfigError(f"{path}: key 'zeroshot': no {LAYOUT_FILE} beside it or in mmbench to lay it out")
        out.append(_read_block(path, data, layout))
    return out


def _read_block(path: Path, data: dict[str, Any], layout: ZeroshotLayout) -> ReportedZeroshot:
    block, metrics, empty = data[ZEROSHOT], data.get("zeroshot_metrics"), data.get("zeroshot_empty", {})
    if not isinstance(block, dict):
        raise DataError(f"{path}: key 'zeroshot': expected {{task: number}}")
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: missing key 'zeroshot_metrics' ({{task: the metric the source reports, or null}})")
    if not isinstance(empty, dict) or not all(isinstance(v, str) and v for v in empty.values()):
        raise DataError(f"{path}: key 'zeroshot_empty': expected {{task: why the cell is empty}}")
    for where, tasks in (("zeroshot", block), ("zeroshot_metrics", metrics), ("zeroshot_empty", empty)):
        unknown = sorted(set(tasks) - layout.tasks)
        if unknown:
            raise DataError(f"{path}: key '{where}.{unknown[0]}': task is not a row of {layout.path.name}")
    for task in block:
        if task not in metrics:
            raise DataError(f"{path}: missing key 'zeroshot_metrics.{task}' (null where not recorded)")
        if metrics[task] is not None and (not isinstance(metrics[task], str) or not metrics[task]):
            raise DataError(f"{path}: key 'zeroshot_metrics.{task}': {metrics[task]!r} is neither a score key nor null")
        if task in empty:
            raise DataError(f"{path}: key 'zeroshot_empty.{task}': the task also has a number in 'zeroshot'")
    note = data.get("zeroshot_note", "")
    if not isinstance(note, str):
        raise DataError(f"{path}: key 'zeroshot_note': expected a string")
    return ReportedZeroshot(
        path=path,
        name=data["name"],
        source=_source_line(data.get("zeroshot_source", data["source"])),
        note=note,
        scores={t: _number(path, f"zeroshot.{t}", v) for t, v in block.items()},
        metrics={t: metrics[t] for t in block},
        empty=dict(empty),
    )


# --- the section -------------------------------------------------------------------------------------------------


def average(values: dict[str, float | str], layout: ZeroshotLayout) -> float | None:
    """Table 4's rule on the section's rows: n/a counts 0; None while any row has no number."""
    got = [values.get(r.task) for r in layout.rows]
    if any(v is None for v in got):
        return None
    return sum(0.0 if isinstance(v, str) else v for v in got) / len(got)


def render_section(runs: list[Run], layout: ZeroshotLayout | None, reported: list[ReportedZeroshot]) -> Section | None:
    """The markdown lines and CSV of the zero-shot section; None when there are no zero-shot results (then the
    leaderboard is exactly what it was before zero-shot results existed)."""
    if not runs:
        return None
    if layout is None:
        raise ConfigError(f"{runs[0].path}: a zero-shot result, but no {LAYOUT_FILE} lays out its table")
    rows = _rows(runs, layout)
    by_header: dict[bool, dict[str, _Column]] = {True: {}, False: {}}
    for run in runs:
        columns = by_header[run.reference]
        _add(columns.setdefault(run.header, _Column(run.header)), run, rows)
    reference, other = ([cols[h] for h in sorted(cols)] for cols in (by_header[True], by_header[False]))
    papers = [_reported_column(rep, layout) for rep in reported]
    for col in reference + other + papers:
        col.average = average(col.values, layout)
    md_lines = [f"## {HEADING}", "", *_preamble(layout), ""]
    md_lines += _markdown(layout, rows, reference + papers)
    if reported:
        md_lines += ["", "Reported columns (numbers as the source prints them):", ""]
        md_lines += [
            f"- {md(rep.name)}: {md(rep.source)}." + (f" {md(rep.note)}" if rep.note else "") for rep in reported
        ]
    csv_rows = _csv_rows(ZEROSHOT, layout, rows, reference + papers)
    if other:
        md_lines += ["", f"## {OTHER_HEADING}", ""]
        md_lines += [
            "For smoke tests and demos: these numbers show that the pipeline runs, not how good a model is.",
            "",
        ]
        md_lines += _markdown(layout, rows, other)
        csv_rows += _csv_rows(f"{ZEROSHOT}_not_comparable", layout, rows, other)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    writer.writerows(csv_rows)
    return Section(markdown=md_lines, csv=buf.getvalue())


def _preamble(layout: ZeroshotLayout) -> list[str]:
    n = len(layout.rows)
    return [
        f"Zero-shot classification from class-name prompts (protocol `{ZEROSHOT}`), laid out by "
        f"`{layout.path.name}`: {layout.source}. These results never enter Table 4 or its averages.",
        "",
        "- Each row is scored by its linear-probe task's primary metric, so a zero-shot number sits on the same "
        "metric as the linear probe of Table 4.",
        f"- Average: the mean of the {n} rows; `{NA}` (the model has no contrastive space; reason in the notes) counts "
        f"0, as in Table 4; a column with any row `{NOT_RUN}` (not run) has no average.",
        "- Measured columns here are reference-grade only (real data, the full split, real weights); anything else "
        "goes to a separate section.",
    ]


def _rows(runs: list[Run], layout: ZeroshotLayout) -> list[ZeroshotRow]:
    """The layout's rows, then any other measured zero-shot task by name (not averaged), scored by its primary."""
    extra: dict[str, ZeroshotRow] = {}
    for run in sorted(runs, key=lambda r: r.result.status != "ok"):  # a scored result names the score first
        task = run.result.task
        if task not in layout.tasks and task not in extra:
            primary = run.result.primary if run.result.status == "ok" else ""
            extra[task] = ZeroshotRow(task=task, score=primary, label=task, metric=primary or NOT_RUN)
    return [*layout.rows, *(extra[t] for t in sorted(extra))]


def _add(col: _Column, run: Run, rows: list[ZeroshotRow]) -> None:
    res, path = run.result, run.path
    if res.task in col.paths:
        raise DataError(f"{path}: a second {col.header!r} result for {res.task} (the other is {col.paths[res.task]})")
    col.paths[res.task] = path
    if res.status != "ok":
        col.values[res.task] = NA
        col.notes[res.task] = f"{col.header}: {res.reason or 'no reason recorded'}"
        return
    score = next(r.score for r in rows if r.task == res.task)
    value = res.scores.get(score)
    if value is None:
        raise DataError(f"{path}: missing key 'scores.{score}' (the zero-shot table's score for {res.task})")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{path}: key 'scores.{score}': {value!r} is not a finite number")
    col.values[res.task] = float(value)


def _reported_column(rep: ReportedZeroshot, layout: ZeroshotLayout) -> _Column:
    col = _Column(rep.name, values=dict(rep.scores))
    for row in layout.rows:
        if row.task in rep.empty:
            col.notes[row.task] = f"{rep.name}: {rep.empty[row.task]}"  # one footnote for a shared reason
        elif row.task in rep.scores and rep.metrics[row.task] != row.score:
            theirs = rep.metrics[row.task]
            said = f"the source reports {theirs}" if theirs else "the source's metric for it is not recorded here"
            col.notes[row.task] = f"{rep.name}: {row.label}: {said}; this row is {row.metric}"
    return col


def _cell(col: _Column, task: str) -> tuple[str, str]:
    """(text, note) of one cell."""
    value = col.values.get(task)
    text = NOT_RUN if value is None else (value if isinstance(value, str) else fmt(value))
    return text, col.notes.get(task, "")


def _lines(layout: ZeroshotLayout, rows: list[ZeroshotRow]) -> list[tuple[str, ZeroshotRow | None]]:
    """(part, row) in table order: the layout rows, a heading and the other tasks, then the average (row None)."""
    out: list[tuple[str, ZeroshotRow | None]] = [("row", r) for r in layout.rows]
    others = rows[len(layout.rows) :]
    if others:
        out += [("other-heading", None)] + [("other", r) for r in others]
    return out + [("average", None)]


def _markdown(layout: ZeroshotLayout, rows: list[ZeroshotRow], columns: list[_Column]) -> list[str]:
    out = ["| Dataset | Metric | " + " | ".join(md(c.header) for c in columns) + " |"]
    out.append("|---|---|" + "---:|" * len(columns))
    notes: dict[str, int] = {}  # footnote text -> number, in order of first appearance
    for part, row in _lines(layout, rows):
        if part == "other-heading":
            out.append("| *Other zero-shot tasks (not averaged)* | |" + " |" * len(columns))
            continue
        if part == "average":
            cells = [NOT_RUN if c.average is None else fmt(c.average) for c in columns]
            out.append(f"| **Average** | mean of {len(layout.rows)} | " + " | ".join(cells) + " |")
            continue
        texts = []
        for col in columns:
            text, note = _cell(col, row.task)
            if note:
                text = f"{text} [{notes.setdefault(note, len(notes) + 1)}]"
            texts.append(md(text))
        out.append(f"| {md(row.label)} | {md(row.metric)} | " + " | ".join(texts) + " |")
    if notes:
        out += ["", "Notes:", ""] + [f"- [{n}] {md(text)}" for text, n in notes.items()]
    return out


def _csv_rows(table: str, layout: ZeroshotLayout, rows: list[ZeroshotRow], columns: list[_Column]) -> list[list[str]]:
    out = []
    for part, row in _lines(layout, rows):
        if part == "other-heading":
            continue
        for col in columns:
            if row is None:
                value = "" if col.average is None else fmt(col.average)
                out.append([table, part, "", "", "Average", f"mean of {len(layout.rows)}", col.header, value, ""])
                continue
            text, note = _cell(col, row.task)
            value = "" if text == NOT_RUN else text
            out.append([table, part, row.task, row.score, row.label, row.metric, col.header, value, note])
    return out
