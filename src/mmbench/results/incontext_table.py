"""The leaderboard's in-context (few-shot) section: results of protocol `incontext`, one table per task, a column
per shot count, a row per (model, demonstration selection), beside published few-shot numbers.

    section = render_section(runs, layout, reported)   # -> Section(markdown, csv) | None when no runs

`table.render` calls it with every in-context result it found (`Run`: the file, the result, whether it is
reference-grade and the column header Table 4 would give it) and appends the section after Table 4; its CSV is a
second file (`LEADERBOARD-incontext.csv`) so that LEADERBOARD.csv keeps its columns. Nothing here touches Table 4:
in-context results never enter its averages.

A result file holds one (model, task, shots) cell: `scores[score]` is the mean over trials, `details.shots` the
number of demonstrations, `details.demonstrations` how they were chosen ("random" or "rices": never in one row, as
retrieval lifts scores a lot), `details.trials` the per-seed scores and `details.std[score]` their sample standard
deviation (ddof=1), printed as `mean ± std` when there are two or more trials. A status-`n/a` result (a model that
cannot generate) fills its cell, or its whole row when it names no shot count, with `n/a` and a note. Reported rows
print the source's numbers at the source's precision. Malformed inputs raise `DataError` naming the file and key.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from mmbench.errors import ConfigError, DataError
from mmbench.results.cells import NA, NOT_RUN, Run, Section, fmt, md
from mmbench.results.layout import INCONTEXT_FILE, IncontextLayout, IncontextRow, ReportedIncontext
from mmbench.results.schema import TaskResult

INCONTEXT = "incontext"  # TaskResult.protocol of few-shot results
CSV_FIELDS = (
    "table",
    "task",
    "score_key",
    "metric",
    "row",
    "demonstrations",
    "shots",
    "value",
    "std",
    "trials",
    "note",
)
ANY = ""  # the demonstrations of an n/a result that names none
HEADING = "In-context (few-shot)"
OTHER_HEADING = f"{HEADING}, not comparable to the paper: synthetic data, `--limit` subsets or random weights"


@dataclass(frozen=True)
class _Cell:
    text: str  # what the markdown prints (before a note marker)
    value: str = ""  # the CSV's value: the mean, n/a or "" (not run)
    std: str = ""
    trials: str = ""
    note: str = ""  # why it is n/a


_MISSING = _Cell(NOT_RUN)


@dataclass
class _Row:
    """One model's (or one paper's) cells: (task, demonstrations) -> shots -> cell; shots None: every shot."""

    header: str
    cells: dict[tuple[str, str], dict[int | None, _Cell]] = field(default_factory=dict)
    paths: dict[tuple[str, str, int | None], Path] = field(default_factory=dict)


def render_section(
    runs: list[Run], layout: IncontextLayout | None, reported: list[ReportedIncontext]
) -> Section | None:
    """The markdown lines and CSV of the in-context section; None when there are no in-context results (then the
    leaderboard is exactly what it was before in-context results existed)."""
    if not runs:
        return None
    if layout is None:
        raise ConfigError(f"{runs[0].path}: an in-context result, but no {INCONTEXT_FILE} lays out its table")
    tasks = _tasks(runs, layout)
    by_header: dict[bool, dict[str, _Row]] = {True: {}, False: {}}  # reference-grade or not -> header -> row
    for run in runs:
        rows = by_header[run.reference]
        _add(rows.setdefault(run.header, _Row(run.header)), run, tasks, layout)
    reference, other = ([rows[h] for h in sorted(rows)] for rows in (by_header[True], by_header[False]))
    papers = [_reported_row(rep) for rep in reported]
    md_lines = [f"## {HEADING}", "", *_preamble(layout)]
    md_lines += _markdown(layout, tasks, reference, papers)
    if reported:
        md_lines += ["", "Reported rows (numbers and spread as the source prints them):", ""]
        md_lines += [
            f"- {md(rep.name)}: {md(rep.source)}." + (f" {md(rep.note)}" if rep.note else "") for rep in reported
        ]
    csv_rows = _csv_rows("incontext", layout, tasks, reference, papers)
    if other:
        md_lines += ["", f"## {OTHER_HEADING}", ""]
        md_lines += ["For smoke tests and demos: these numbers show that the pipeline runs, not how good a model is."]
        md_lines += _markdown(layout, tasks, other, [])
        csv_rows += _csv_rows("incontext_not_comparable", layout, tasks, other, [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    writer.writerows(csv_rows)
    return Section(markdown=md_lines, csv=buf.getvalue())


def _preamble(layout: IncontextLayout) -> list[str]:
    return [
        f"Few-shot prompting of frozen generative models (protocol `{INCONTEXT}`), laid out by "
        f"`{layout.path.name}`. These results never enter Table 4 or its averages.",
        "",
        "- One table per task; columns: the number of in-context demonstrations (shots); rows: a model and how its "
        f"demonstrations were chosen ({', '.join(layout.demonstrations.values())}), never mixed in one row.",
        "- A measured cell is the mean over trials (seeds), printed `mean ± std` with two or more trials; std is the "
        "sample standard deviation (ddof=1).",
        f"- `{NA}`: the model cannot do the task (reason in the notes); `{NOT_RUN}`: not run.",
        "- Measured rows here are reference-grade only (real data, the full split, real weights); anything else goes "
        "to a separate section.",
    ]


def _tasks(runs: list[Run], layout: IncontextLayout) -> list[IncontextRow]:
    """The layout's tasks, then any other measured task by name, scored by its primary metric (a task with only n/a
    results has none)."""
    extra: dict[str, IncontextRow] = {}
    for run in sorted(runs, key=lambda r: r.result.status != "ok"):  # a scored result names the score first
        task = run.result.task
        if task not in layout.tasks and task not in extra:
            primary = run.result.primary if run.result.status == "ok" else ""
            extra[task] = IncontextRow(task=task, score=primary, label=task, metric=primary or NOT_RUN)
    return [*layout.rows, *(extra[t] for t in sorted(extra))]


def _add(row: _Row, run: Run, tasks: list[IncontextRow], layout: IncontextLayout) -> None:
    res, path = run.result, run.path
    shots = res.details.get("shots")
    if shots is not None or res.status == "ok":
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
            raise DataError(f"{path}: key 'details.shots': {shots!r} is not a number of demonstrations (integer >= 0)")
    demo = res.details.get("demonstrations")
    if demo is None and res.status != "ok":
        demo = ANY
    elif demo not in layout.demonstrations:
        known = ", ".join(layout.demonstrations)
        raise DataError(f"{path}: key 'details.demonstrations': {demo!r} is not one of {known} ({layout.path.name})")
    key = (res.task, demo, shots)
    if key in row.paths:
        which = f"{res.task} ({demo or 'any selection'}, {'every shot count' if shots is None else f'{shots} shots'})"
        raise DataError(
            f"{path}: a second {row.header!r} result for {which} (the other is {row.paths[key]}); remove one"
        )
    row.paths[key] = path
    if res.status != "ok":
        cell = _Cell(NA, value=NA, note=res.reason or "no reason recorded")
    else:
        score = next(t.score for t in tasks if t.task == res.task)
        cell = _measured(path, res, score)
    row.cells.setdefault((res.task, demo), {})[shots] = cell


def _measured(path: Path, res: TaskResult, score: str) -> _Cell:
    if score not in res.scores:
        raise DataError(f"{path}: missing key 'scores.{score}' (the in-context table's score for {res.task})")
    mean = res.scores[score]
    trials = res.details.get("trials")
    if trials is not None and not isinstance(trials, list):
        raise DataError(f"{path}: key 'details.trials': expected a list of per-trial scores")
    n = 1 if trials is None else len(trials)
    if n < 2:
        return _Cell(fmt(mean), value=fmt(mean), trials=str(n) if trials else "")
    std = res.details.get("std")
    value = std.get(score) if isinstance(std, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise DataError(f"{path}: key 'details.std.{score}': {value!r} is not a standard deviation ({n} trials)")
    return _Cell(f"{fmt(mean)} ± {fmt(value)}", value=fmt(mean), std=fmt(value), trials=str(n))


def _reported_row(rep: ReportedIncontext) -> _Row:
    row = _Row(rep.name)
    for key, by_shots in rep.cells.items():
        cells: dict[int | None, _Cell] = {}
        for shots, c in by_shots.items():
            mean, std = fmt(c.mean, rep.decimals), None if c.std is None else fmt(c.std, rep.decimals)
            text = mean if std is None else f"{mean} ± {std}"
            cells[shots] = _Cell(text, value=mean, std=std or "", trials="" if c.trials is None else str(c.trials))
        row.cells[key] = cells
    return row


def _shots(layout: IncontextLayout, rows: list[_Row]) -> list[int]:
    seen = {s for row in rows for cells in row.cells.values() for s in cells if s is not None}
    return sorted(set(layout.shots) | seen)


def _lines(layout: IncontextLayout, task: str, rows: list[_Row], papers: list[_Row]) -> list[tuple[_Row, str]]:
    """(row, demonstrations) pairs of one task's table: each measured row's selections in the layout's order (one
    row of `—` when it has nothing for this task), then the papers' rows for this task."""
    order = [ANY, *layout.demonstrations]
    out = []
    for row in rows:
        demos = [d for d in order if (task, d) in row.cells]
        out += [(row, d) for d in demos] or [(row, ANY)]
    for paper in papers:
        out += [(paper, d) for d in order if (task, d) in paper.cells]
    return out


def _cell(row: _Row, task: str, demo: str, shots: int) -> _Cell:
    cells = row.cells.get((task, demo), {})
    return cells.get(shots) or cells.get(None) or _MISSING


def _markdown(layout: IncontextLayout, tasks: list[IncontextRow], rows: list[_Row], papers: list[_Row]) -> list[str]:
    shots = _shots(layout, rows + papers)
    notes: dict[str, int] = {}  # "row: reason" -> footnote number, in order of first appearance
    out: list[str] = []
    for t in tasks:
        out += ["", f"### {md(t.label)} ({md(t.metric)})", ""]
        out.append("| Model | Demonstrations | " + " | ".join(f"{s}-shot" for s in shots) + " |")
        out.append("|---|---|" + "---:|" * len(shots))
        for row, demo in _lines(layout, t.task, rows, papers):
            texts = []
            for s in shots:
                cell = _cell(row, t.task, demo, s)
                if cell.note:
                    n = notes.setdefault(f"{row.header}: {cell.note}", len(notes) + 1)
                    texts.append(f"{cell.text} [{n}]")
                else:
                    texts.append(cell.text)
            label = layout.demonstrations.get(demo, NOT_RUN)
            out.append(f"| {md(row.header)} | {md(label)} | " + " | ".join(md(x) for x in texts) + " |")
    if notes:
        out += ["", "Notes:", ""] + [f"- [{n}] {md(text)}" for text, n in notes.items()]
    return out


def _csv_rows(
    table: str, layout: IncontextLayout, tasks: list[IncontextRow], rows: list[_Row], papers: list[_Row]
) -> list[list[str]]:
    shots = _shots(layout, rows + papers)
    out = []
    for t in tasks:
        for row, demo in _lines(layout, t.task, rows, papers):
            for s in shots:
                c = _cell(row, t.task, demo, s)
                out.append(
                    [table, t.task, t.score, t.metric, row.header, demo, str(s), c.value, c.std, c.trials, c.note]
                )
    return out
