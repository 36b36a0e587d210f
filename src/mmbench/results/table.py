"""The leaderboard: results/LEADERBOARD.md (+ .csv beside it) in the FLAVA paper's Table-4 layout.

Public functions (pure; the CLI `mmbench table [--results DIR] [--out FILE] [--check]` only calls them):

    board = render(results_dir, reported_dir=None) -> Leaderboard  # .markdown .csv .zeroshot_csv .incontext_csv
    write(board, out_md: Path) -> None            # LEADERBOARD.md, LEADERBOARD.csv (+ -zeroshot/-incontext.csv)
    check(board, out_md: Path) -> list[str]       # differences from the committed files; [] when equal
    domain_averages(scores_by_task, layout) -> {"language": x | None, "vision": ..., "multimodal": ..., "macro": ...}

`render` reads `<results_dir>/runs/<model>/<task>.json` and `<results_dir>/synthetic/runs/...` (where synthetic runs
go by default), the Table-4 layout and the paper's reported columns that ship with mmbench, and `reported_dir` if
given: its `*.json` add columns (or replace the shipped file of the same name), its `table4.yaml` the layout.
Reference-grade results (`TaskResult.is_reference_grade`: real data, no `--limit`, real weights) fill the first
table, one column per model, beside the paper's columns; everything else goes to a second table headed as not
comparable, one column per (model, data source, limit, random init), so a smoke-test number can never pass for a
real one. A measured number from another split than a reported column's (VQAv2: val2014 here, test-dev2015 in
the paper), or beside one whose split the source does not state, carries a note saying so. The output is
deterministic (sorted columns, no paths, times or dates) so that CI can diff it.

Results of protocol `zeroshot` (zero-shot classification on Table 4's 22 vision datasets) and `incontext` (few-shot,
one file per shot count) never enter Table 4 or its averages: they go to sections after it, zero-shot first
(`zeroshot_table`, its own average), then in-context (`incontext_table`), each rendered only when such results
exist, each with its own CSV (`LEADERBOARD-zeroshot.csv`, `LEADERBOARD-incontext.csv`) so that LEADERBOARD.csv
keeps its columns for its readers.
Malformed inputs raise `DataError` / `ConfigError` naming the file and key.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mmbench.errors import DataError
from mmbench.paths import atomic_write_text
from mmbench.results import incontext_table, store, zeroshot_table
from mmbench.results.cells import NA, NOT_RUN, fmt, md  # NA in `scores_by_task`: a task the model cannot do
from mmbench.results.layout import (
    Layout,
    Reported,
    incontext_layout_of,
    layout_of,
    load_reported,
    load_reported_incontext,
    reported_dirs,
)
from mmbench.results.schema import TaskResult

MACRO = "macro"
# The paper averaged unrounded per-task numbers and printed them to 2 decimals; averaging the printed numbers
# lands within 0.01 of its averages (its last digit is sometimes rounded, sometimes truncated: see tests).
PAPER_TOLERANCE = 0.01
CSV_FIELDS = ("table", "part", "domain", "task", "score_key", "row", "metric", "column", "value", "note")
_MAX_DIFF_LINES = 10


@dataclass(frozen=True)
class Leaderboard:
    markdown: str
    csv: str
    incontext_csv: str = ""  # "" when there are no in-context results (and so no in-context section)
    zeroshot_csv: str = ""  # "" when there are no zero-shot results (and so no zero-shot section)


def incontext_csv_path(out_md: Path) -> Path:
    """Where the in-context section's CSV goes beside `out_md`: LEADERBOARD-incontext.csv."""
    return Path(out_md).with_name(f"{Path(out_md).stem}-incontext.csv")


def zeroshot_csv_path(out_md: Path) -> Path:
    """Where the zero-shot section's CSV goes beside `out_md`: LEADERBOARD-zeroshot.csv."""
    return Path(out_md).with_name(f"{Path(out_md).stem}-zeroshot.csv")


def _section_csvs(leaderboard: Leaderboard, out_md: Path) -> list[tuple[Path, str, str]]:
    """(path, content or "", what its results are called) of each section's CSV beside `out_md`."""
    return [
        (zeroshot_csv_path(out_md), leaderboard.zeroshot_csv, "zero-shot"),
        (incontext_csv_path(out_md), leaderboard.incontext_csv, "in-context"),
    ]


def domain_averages(scores_by_task: Mapping[str, Mapping[str, float] | str], layout: Layout) -> dict[str, float | None]:
    """The paper's rule: each domain's average is the mean of its layout rows, `scores_by_task[task] == NA` counts 0
    in each of the task's rows, and a row with no number at all makes the domain (and Macro) `None`, because a
    partial mean would look like a real one. Macro = mean of the domain averages."""
    out: dict[str, float | None] = {}
    for domain in layout.domains:
        values: list[float] | None = []
        for row in layout.rows_of(domain.name):
            got = scores_by_task.get(row.task)
            if isinstance(got, str):
                if got != NA:
                    raise ValueError(f"scores_by_task[{row.task!r}]: {got!r} is neither scores nor {NA!r}")
                values.append(0.0)
            elif got is None or row.score not in got:
                values = None
                break
            else:
                values.append(float(got[row.score]))
        out[domain.name] = None if values is None else sum(values) / len(values)
    per_domain = [out[d.name] for d in layout.domains]
    out[MACRO] = None if any(v is None for v in per_domain) else sum(per_domain) / len(per_domain)
    return out


@dataclass
class _Column:
    header: str
    scores: dict[str, dict[str, float] | str] = field(default_factory=dict)  # task -> scores | NA
    reasons: dict[str, str] = field(default_factory=dict)  # task -> why it is n/a
    domains: dict[str, str] = field(default_factory=dict)  # task -> domain, to place tasks outside the layout
    splits: dict[str, str | None] = field(default_factory=dict)  # task -> the split its numbers come from
    split_notes: dict[str, str] = field(default_factory=dict)  # task -> why its split needs a note
    averages: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class _Line:
    part: str  # "heading" | "table4" | "other-heading" | "other" | "average"
    domain: str
    label: str
    task: str = ""
    score: str = ""
    metric: str = ""


def render(results_dir: Path, reported_dir: Path | None = None) -> Leaderboard:
    """Render the leaderboard from a results directory (missing = no runs yet), the shipped reported numbers and,
    if given, a folder of further reported columns."""
    results_dir = Path(results_dir)
    sources = reported_dirs(reported_dir)
    layout = layout_of(sources)
    reference: dict[str, _Column] = {}
    other: dict[tuple, _Column] = {}
    incontext: list[incontext_table.Run] = []
    zeroshot: list[zeroshot_table.Run] = []
    for root, path, res in _read_runs(results_dir):
        if res.protocol == zeroshot_table.ZEROSHOT:
            grade = root == results_dir and res.is_reference_grade
            zeroshot.append(zeroshot_table.Run(path, res, grade, res.model if grade else _other_header(res)))
            continue
        if res.protocol == incontext_table.INCONTEXT:
            grade = root == results_dir and res.is_reference_grade
            incontext.append(incontext_table.Run(path, res, grade, res.model if grade else _other_header(res)))
            continue
        if store.name_of(res) != res.task:  # a variant (ITM re-ranked retrieval): not the paper's protocol
            continue
        _validate(res, path, layout)
        if root == results_dir and res.is_reference_grade:
            col = reference.setdefault(res.model, _Column(res.model))
        else:
            key = (res.model, res.data_source, -1 if res.limit is None else res.limit, res.random_init)
            col = other.setdefault(key, _Column(_other_header(res)))
            if res.task in col.scores:  # the same run kind in runs/ and synthetic/runs/
                raise DataError(f"{path}: a second {col.header!r} result for task {res.task!r}; remove one")
        _add(col, res)
    measured = [reference[m] for m in sorted(reference)]
    reported = load_reported(sources, layout)
    papers = [_reported_column(r, layout) for r in reported]
    others = [other[k] for k in sorted(other)]
    for col in measured + others:
        col.averages = domain_averages(col.scores, layout)
    for col in measured:
        col.split_notes = _split_notes(col, reported, layout)

    md = [*_preamble(layout), "", "## Comparable to the paper", ""]
    md += _markdown_table(layout, measured + papers)
    md += [
        "",
        "Reported columns (averages as the paper prints them; averaging their scores agrees to within 0.01):",
        "",
    ] + [f"- {r.name}: {r.source}" for r in reported]
    md += _splits_summary(reported)
    md += ["", layout.errata] if layout.errata else []
    rows = _csv_rows("reference", layout, measured + papers)
    if others:
        md += ["", "## Not comparable to the paper: synthetic data, `--limit` subsets or random weights", ""]
        md += ["For smoke tests and demos: these numbers show that the pipeline runs, not how good a model is.", ""]
        md += _markdown_table(layout, others)
        rows += _csv_rows("not_comparable", layout, others)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    writer.writerows(rows)
    zeroshot_layout = zeroshot_table.layout_of(sources)
    zs = zeroshot_table.render_section(
        zeroshot, zeroshot_layout, zeroshot_table.load_reported(sources, zeroshot_layout)
    )
    md += ["", *zs.markdown] if zs else []
    incontext_layout = incontext_layout_of(sources)
    section = incontext_table.render_section(
        incontext, incontext_layout, load_reported_incontext(sources, incontext_layout)
    )
    md += ["", *section.markdown] if section else []
    return Leaderboard(
        markdown="\n".join(md) + "\n",
        csv=buf.getvalue(),
        incontext_csv=section.csv if section else "",
        zeroshot_csv=zs.csv if zs else "",
    )


def write(leaderboard: Leaderboard, out_md: Path) -> None:
    """Write `out_md` and the CSV beside it (same stem), each via a temporary file and `os.replace`; the
    zero-shot and in-context CSVs too when there is such a section, and otherwise remove one left by an earlier
    render (it would describe results that are gone)."""
    out_md = Path(out_md)
    atomic_write_text(out_md, leaderboard.markdown)
    atomic_write_text(out_md.with_suffix(".csv"), leaderboard.csv)
    for path, content, _ in _section_csvs(leaderboard, out_md):
        if content:
            atomic_write_text(path, content)
        else:
            path.unlink(missing_ok=True)


def check(leaderboard: Leaderboard, out_md: Path) -> list[str]:
    """Human-readable differences between the committed files and a fresh render; [] when they are equal."""
    out_md = Path(out_md)
    problems: list[str] = []
    for path, fresh in ((out_md, leaderboard.markdown), (out_md.with_suffix(".csv"), leaderboard.csv)):
        if not path.is_file():
            problems.append(f"{path}: missing; run `mmbench table` to create it")
            continue
        committed = path.read_text()
        if committed != fresh:
            problems += _line_differences(path, committed.splitlines(), fresh.splitlines())
    for path, fresh, kind in _section_csvs(leaderboard, out_md):
        if fresh:
            if not path.is_file():
                problems.append(f"{path}: missing; run `mmbench table` to create it")
            elif path.read_text() != fresh:
                problems += _line_differences(path, path.read_text().splitlines(), fresh.splitlines())
        elif path.is_file():
            problems.append(f"{path}: a fresh render has no {kind} results; run `mmbench table` to remove it")
    return problems


def _read_runs(results_dir: Path) -> list[tuple[Path, Path, TaskResult]]:
    """(root, file, result) of every result in `<results_dir>/runs/` and `<results_dir>/synthetic/runs/`, sorted by
    file. The file is read off the disk rather than rebuilt from (model, task), because an in-context result's file
    name also carries its shot count."""
    out = []
    for root in (results_dir, results_dir / "synthetic"):
        out += [(root, path, store.read(path)) for path in sorted((root / "runs").glob("*/*.json"))]
    return out


def _validate(res: TaskResult, path: Path, layout: Layout) -> None:
    if res.status != "ok":
        return
    for row in layout.rows:
        if row.task == res.task and row.score not in res.scores:
            raise DataError(f"{path}: missing key 'scores.{row.score}' (leaderboard row {row.label!r})")
    for key, value in res.scores.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise DataError(f"{path}: key 'scores.{key}': {value!r} is not a finite number")


def _other_header(res: TaskResult) -> str:
    parts = [res.data_source]
    parts += [f"limit {res.limit}"] if res.limit is not None else []
    parts += ["random init"] if res.random_init else []
    return f"{res.model} ({', '.join(parts)})"


def _add(col: _Column, res: TaskResult) -> None:
    col.domains[res.task] = res.domain
    task_cfg = res.config.get("task") if isinstance(res.config, dict) else None
    data_cfg = task_cfg.get("data") if isinstance(task_cfg, dict) else None
    col.splits[res.task] = data_cfg.get("split") if isinstance(data_cfg, dict) else None
    if res.status == "n/a":
        col.scores[res.task] = NA
        col.reasons[res.task] = res.reason or "no reason recorded"
    else:
        col.scores[res.task] = dict(res.scores)


def _split_notes(col: _Column, reported: list[Reported], layout: Layout) -> dict[str, str]:
    """task -> note, for each scored layout task of a measured column whose split differs from a reported column's,
    or whose reported split is not stated; e.g. "vqav2: measured on val2014; FLAVA (paper): test-dev2015"."""
    notes: dict[str, str] = {}
    for task in sorted(layout.tasks):
        if not isinstance(col.scores.get(task), dict):
            continue
        ours = col.splits.get(task)
        theirs: dict[str, list[str]] = {}  # their split (or "" when not stated) -> reported column names
        for rep in reported:
            if rep.splits is None:
                continue  # the file says nothing about splits: nothing to compare
            split = rep.splits.get(task)
            if split is None or split != ours:
                theirs.setdefault(split or "", []).append(rep.name)
        if theirs:
            parts = [f"{', '.join(names)}: {split or 'split not stated'}" for split, names in sorted(theirs.items())]
            notes[task] = f"{task}: measured on {ours or 'a split the result does not record'}; " + "; ".join(parts)
    return notes


def _splits_summary(reported: list[Reported]) -> list[str]:
    """One line per distinct split map among the reported columns: which tasks come from which split."""
    groups: dict[tuple, list[str]] = {}
    for rep in reported:
        if rep.splits is not None:
            groups.setdefault(tuple(rep.splits.items()), []).append(rep.name)
    lines = []
    for items, names in groups.items():
        by_split: dict[str, list[str]] = {}
        for task, split in items:
            by_split.setdefault(split or "not stated", []).append(task)
        text = "; ".join(f"{split} ({', '.join(tasks)})" for split, tasks in by_split.items())
        lines.append(f"- {', '.join(names)}: {text}.")
    return (
        ["", "The splits these numbers were measured on (named as mmbench's tasks name them):", "", *lines]
        if lines
        else []
    )


def _reported_column(rep: Reported, layout: Layout) -> _Column:
    """The paper's columns print the paper's own averages, once ours agree with them (catches a mistyped score)."""
    col = _Column(rep.name, scores=dict(rep.scores))
    computed = domain_averages(col.scores, layout)
    if rep.averages is None:
        col.averages = computed
        return col
    for key, printed in rep.averages.items():
        ours = computed[key]
        if ours is None or abs(ours - printed) > PAPER_TOLERANCE + 1e-9:
            raise DataError(
                f"{rep.path}: key 'averages.{key}': printed {printed} but the scores average to {ours:.4f}; "
                "a score or the average is mistyped"
            )
    col.averages = dict(rep.averages)
    return col


def _preamble(layout: Layout) -> list[str]:
    counts = " / ".join(str(len(layout.rows_of(d.name))) for d in layout.domains)
    averages = ", ".join(d.average for d in layout.domains)
    return [
        "# mmbench leaderboard",
        "",
        "Generated by `mmbench table`; do not edit by hand. CI runs `mmbench table --check`, which fails when this "
        "file or LEADERBOARD.csv differs from a fresh render of the results and `results/reported/`.",
        "",
        f"Layout: {layout.source}. Scores are on a 0-100 scale, 2 decimals.",
        "",
        f"- {averages}: mean of the domain's {counts} score rows; Macro Avg: mean of the {len(layout.domains)} "
        "domain averages (the paper's rule).",
        f"- `{NA}`: the model cannot do the task (reason in the notes); it counts 0 in each of its rows, as in the "
        "paper.",
        f"- `{NOT_RUN}`: not run. A domain with any row not run has no average, and then Macro has none either.",
        "- The first table's measured columns hold only reference-grade results: real data, the full evaluation "
        "split (no `--limit`), real weights. Anything else is in a separate table, not comparable to the paper.",
        "- Tasks outside Table 4 are listed as other tasks and are left out of every average.",
        "- A measured number from another split than the paper's (VQAv2: val2014 here, test-dev2015 in the paper), or "
        "beside a paper number whose split the paper does not state, carries a note naming both.",
    ]


def _lines(layout: Layout, columns: list[_Column]) -> list[_Line]:
    """Table rows: each domain's heading, its layout rows, its other tasks; then the averages."""
    layout_tasks = layout.tasks
    extra: dict[str, dict[str, set[str]]] = {}  # domain -> task -> score keys, for tasks outside the layout
    for col in columns:
        for task, scores in col.scores.items():
            if task not in layout_tasks:
                keys = extra.setdefault(col.domains[task], {}).setdefault(task, set())
                keys.update(scores if isinstance(scores, dict) else [])
    known = [d.name for d in layout.domains]
    lines: list[_Line] = []
    for name, heading in [(d.name, d.heading) for d in layout.domains] + [
        (n, n) for n in sorted(set(extra) - set(known))
    ]:
        lines.append(_Line("heading", name, heading))
        lines += [_Line("table4", name, r.label, r.task, r.score, r.metric) for r in layout.rows_of(name)]
        if name in extra:
            lines.append(_Line("other-heading", name, f"{heading}, other tasks (not in Table 4, not averaged)"))
            for task in sorted(extra[name]):
                keys = sorted(extra[name][task]) or [""]  # only n/a results: one row for the task
                lines += [_Line("other", name, f"{task} {k}".strip(), task, k, k) for k in keys]
    lines.append(_Line("heading", "", "Averages"))
    lines += [
        _Line("average", d.name, d.average, metric=f"mean of {len(layout.rows_of(d.name))}") for d in layout.domains
    ]
    lines.append(_Line("average", MACRO, "Macro Avg", metric=f"mean of {len(layout.domains)} domains"))
    return lines


def _cell(col: _Column, line: _Line) -> tuple[str, str]:
    """(text, n/a reason) of one cell."""
    if line.part == "average":
        value = col.averages.get(line.domain)
        return (NOT_RUN, "") if value is None else (fmt(value), "")
    got = col.scores.get(line.task)
    if got is None:
        return NOT_RUN, ""
    if isinstance(got, str):
        return NA, col.reasons.get(line.task, "")
    return (fmt(got[line.score]), "") if line.score in got else (NOT_RUN, "")


def _markdown_table(layout: Layout, columns: list[_Column]) -> list[str]:
    out = ["| Task | Metric | " + " | ".join(md(c.header) for c in columns) + " |"]
    out.append("|---|---|" + "---:|" * len(columns))
    notes: dict[str, int] = {}  # "column: reason" -> footnote number, in order of first appearance
    blank = " |" * len(columns)
    for line in _lines(layout, columns):
        if line.part == "heading":
            out.append(f"| **{md(line.label)}** | |{blank}")
        elif line.part == "other-heading":
            out.append(f"| *{md(line.label)}* | |{blank}")
        else:
            cells = []
            for col in columns:
                text, reason = _cell(col, line)
                note = f"{col.header}: {reason}" if reason else _split_note(col, line, text)
                if note:
                    n = notes.setdefault(note, len(notes) + 1)
                    text = f"{text} [{n}]"
                cells.append(text)
            out.append(f"| {md(line.label)} | {md(line.metric)} | " + " | ".join(md(c) for c in cells) + " |")
    if notes:
        out += ["", "Notes:", ""] + [f"- [{n}] {md(text)}" for text, n in notes.items()]
    return out


def _csv_rows(table: str, layout: Layout, columns: list[_Column]) -> list[list[str]]:
    rows = []
    for line in _lines(layout, columns):
        if line.part in ("heading", "other-heading"):
            continue
        domain = "" if line.domain == MACRO else line.domain
        for col in columns:
            text, reason = _cell(col, line)
            value = "" if text == NOT_RUN else text
            note = reason or _split_note(col, line, text)
            rows.append(
                [table, line.part, domain, line.task, line.score, line.label, line.metric, col.header, value, note]
            )
    return rows


def _split_note(col: _Column, line: _Line, text: str) -> str:
    return col.split_notes.get(line.task, "") if line.part == "table4" and text not in (NOT_RUN, NA) else ""


def _line_differences(path: Path, committed: list[str], fresh: list[str]) -> list[str]:
    out: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, committed, fresh, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            old = committed[i1 + k] if i1 + k < i2 else None
            new = fresh[j1 + k] if j1 + k < j2 else None
            where = f"{path}:{i1 + k + 1 if old is not None else i2}"
            if old is not None and new is not None:
                out.append(f"{where}: committed {old!r}, fresh render {new!r}")
            elif old is not None:
                out.append(f"{where}: committed line {old!r} is not in a fresh render")
            else:
                out.append(f"{where}: a fresh render adds {new!r}")
    if len(out) > _MAX_DIFF_LINES:
        out = out[:_MAX_DIFF_LINES] + [f"{path}: ... and {len(out) - _MAX_DIFF_LINES} more differing lines"]
    return out
