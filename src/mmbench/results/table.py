"""The leaderboard: results/LEADERBOARD.md (+ .csv beside it) in the FLAVA paper's Table-4 layout.

Public functions (pure; the CLI `mmbench table [--results DIR] [--out FILE] [--check] [--no-plots]` only calls them):

    board = render(results_dir, reported_dir=None, plots=False, cost=False) -> Leaderboard
    write(board, out_md: Path) -> None            # LEADERBOARD.md, LEADERBOARD.csv (+ -zeroshot/-incontext.csv,
                                                  # -cost.md and plots/ when rendered with them)
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
A result over several seeds (`scores_std`) prints `mean ± std` in the markdown; its CSV value stays the mean (a
number) and its note says the spread; the averages use the means.

`cost=True` adds the cost table (`cost.py`, `LEADERBOARD-cost.md`, linked from the markdown) and `plots=True` the
pictures (`plot.py`: PNG + SVG in `plots/` beside the markdown, a "Pictures" section embedding them); both are drawn
from the results as a DataFrame (`frame.py`), whose averages are the same rule computed with pandas. `check` then
also compares the cost table and checks that each picture exists and embeds the key of what it must plot.
Malformed inputs raise `DataError` / `ConfigError` naming the file and key.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mmbench.errors import DataError
from mmbench.paths import atomic_write_text
from mmbench.results import cost as cost_table
from mmbench.results import frame as frames
from mmbench.results import incontext_table, plot, store, zeroshot_table
from mmbench.results.cells import (
    NA,
    NOT_RUN,
    fmt,
    line_differences,
    md,
)  # NA in `scores_by_task`: a task the model cannot do
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


@dataclass(frozen=True)
class Leaderboard:
    markdown: str
    csv: str
    incontext_csv: str = ""  # "" when there are no in-context results (and so no in-context section)
    zeroshot_csv: str = ""  # "" when there are no zero-shot results (and so no zero-shot section)
    cost: str = ""  # LEADERBOARD-cost.md; "" when not rendered
    pictures: tuple[plot.Picture, ...] = ()  # drawn into plots/ beside the markdown; () when not rendered


PLOTS_DIR = "plots"  # beside the markdown; its links are relative to it


def _beside(out_md: Path, part: str) -> Path:
    """A file that goes with the leaderboard `out_md`: LEADERBOARD-<part>."""
    return Path(out_md).with_name(f"{Path(out_md).stem}-{part}")


def cost_path(out_md: Path) -> Path:
    return _beside(out_md, "cost.md")


def incontext_csv_path(out_md: Path) -> Path:
    return _beside(out_md, "incontext.csv")


def zeroshot_csv_path(out_md: Path) -> Path:
    return _beside(out_md, "zeroshot.csv")


def _text_files(leaderboard: Leaderboard, out_md: Path) -> list[tuple[Path, str, str | None]]:
    """(path, fresh content, what its results are called) of every text file a render writes beside `out_md`;
    a section's CSV (named) exists only while its section has results, the others always."""
    out_md = Path(out_md)
    return [
        (out_md, leaderboard.markdown, None),
        (out_md.with_suffix(".csv"), leaderboard.csv, None),
        (zeroshot_csv_path(out_md), leaderboard.zeroshot_csv, "zero-shot"),
        (incontext_csv_path(out_md), leaderboard.incontext_csv, "in-context"),
        *([(cost_path(out_md), leaderboard.cost, None)] if leaderboard.cost else []),
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
    spread: dict[str, tuple[dict[str, float], int]] = field(default_factory=dict)  # task -> (scores_std, seeds)
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


def render(results_dir: Path, reported_dir: Path | None = None, plots: bool = False, cost: bool = False) -> Leaderboard:
    """Render the leaderboard from a results directory (missing = no runs yet), the shipped reported numbers and,
    if given, a folder of further reported columns; with the pictures and the cost table when asked."""
    results_dir = Path(results_dir)
    sources = reported_dirs(reported_dir)
    layout = layout_of(sources)
    reference: dict[str, _Column] = {}
    other: dict[tuple, _Column] = {}
    incontext: list[incontext_table.Run] = []
    zeroshot: list[zeroshot_table.Run] = []
    runs = _read_runs(results_dir)
    for path, res, primary in runs:
        grade = primary and res.is_reference_grade
        if res.protocol == zeroshot_table.ZEROSHOT:
            zeroshot.append(zeroshot_table.Run(path, res, grade, frames.header_of(res, grade)))
            continue
        if res.protocol == incontext_table.INCONTEXT:
            incontext.append(incontext_table.Run(path, res, grade, frames.header_of(res, grade)))
            continue
        if store.name_of(res) != res.task:  # a variant (ITM re-ranked retrieval): not the paper's protocol
            continue
        _validate(res, path, layout)
        if grade:
            col = reference.setdefault(res.model, _Column(res.model))
        else:
            key = (res.model, res.data_source, -1 if res.limit is None else res.limit, res.random_init)
            col = other.setdefault(key, _Column(frames.header_of(res, False)))
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

    seeded = any(col.spread for col in measured + others)
    md = [*_preamble(layout), *(_SEEDS_LINE if seeded else []), "", "## Comparable to the paper", ""]
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
    frame = frames.frame_of(runs) if plots or cost else None
    costs = cost_table.render(frame) if cost else ""
    md += (
        ["", "## Cost", "", f"Wall time, device-hours and peak memory per column: [{_COST_LINK}]({_COST_LINK})."]
        if costs
        else []
    )
    pictures = plot.plan(frame, layout, reported) if plots else []
    md += ["", *plot.markdown(pictures, PLOTS_DIR)] if pictures else []
    return Leaderboard(
        markdown="\n".join(md) + "\n",
        csv=buf.getvalue(),
        incontext_csv=section.csv if section else "",
        zeroshot_csv=zs.csv if zs else "",
        cost=costs,
        pictures=tuple(pictures),
    )


_COST_LINK = cost_path(Path("LEADERBOARD.md")).name
_SEEDS_LINE = [
    "- `mean ± std`: a result over several seeds (`--seeds`): the mean and the sample standard deviation (n-1) of "
    "the seeds' scores; the averages use the means."
]


def write(leaderboard: Leaderboard, out_md: Path) -> None:
    """Write `out_md`, the CSV beside it (same stem) and the cost table, each via a temporary file and
    `os.replace`; the zero-shot and in-context CSVs too when there is such a section, and otherwise remove one left
    by an earlier render (it would describe results that are gone); then the pictures."""
    for path, content, section in _text_files(leaderboard, out_md):
        if content or section is None:
            atomic_write_text(path, content)
        else:
            path.unlink(missing_ok=True)
    if leaderboard.pictures:
        plot.draw(list(leaderboard.pictures), Path(out_md).parent / PLOTS_DIR)


def check(leaderboard: Leaderboard, out_md: Path) -> list[str]:
    """Human-readable differences between the committed files and a fresh render; [] when they are equal."""
    problems: list[str] = []
    for path, fresh, section in _text_files(leaderboard, out_md):
        if not (fresh or section is None):
            if path.is_file():
                problems.append(f"{path}: a fresh render has no {section} results; run `mmbench table` to remove it")
        elif not path.is_file():
            problems.append(f"{path}: missing; run `mmbench table` to create it")
        elif path.read_text() != fresh:
            problems += line_differences(path, path.read_text().splitlines(), fresh.splitlines())
    if leaderboard.pictures:
        problems += plot.check(list(leaderboard.pictures), Path(out_md).parent / PLOTS_DIR)
    return problems


def _read_runs(results_dir: Path) -> list[tuple[Path, TaskResult, bool]]:
    """(file, result, whether it lies in the real runs folder) of every result in `<results_dir>/runs/` and
    `<results_dir>/synthetic/runs/`, sorted by file (`frame.folder_files`: the DataFrame reads the same files).
    The file is read off the disk rather than rebuilt from (model, task), because an in-context result's file name
    also carries its shot count."""
    return [(path, store.read(path), primary) for path, primary in frames.folder_files(results_dir)]


def _validate(res: TaskResult, path: Path, layout: Layout) -> None:
    if res.status != "ok":
        return
    for row in layout.rows:
        if row.task == res.task and row.score not in res.scores:
            raise DataError(f"{path}: missing key 'scores.{row.score}' (leaderboard row {row.label!r})")
    for key, value in res.scores.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise DataError(f"{path}: key 'scores.{key}': {value!r} is not a finite number")


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
        if res.scores_std:
            col.spread[res.task] = (dict(res.scores_std), len(res.seed_runs))


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
                std, _ = _spread(col, line)
                text = f"{text} ± {std}" if std else text
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
            std, seeds = _spread(col, line)
            note = "; ".join(n for n in (reason or _split_note(col, line, text), seeds) if n)
            rows.append(
                [table, line.part, domain, line.task, line.score, line.label, line.metric, col.header, value, note]
            )
    return rows


def _spread(col: _Column, line: _Line) -> tuple[str, str]:
    """(std as printed, what the CSV note says) of a cell measured over several seeds; ("", "") otherwise."""
    stds, n = col.spread.get(line.task, ({}, 0)) if line.part in ("table4", "other") else ({}, 0)
    if line.score not in stds:
        return "", ""
    std = fmt(stds[line.score])
    return std, f"mean of {n} seeds, sample std {std}"


def _split_note(col: _Column, line: _Line, text: str) -> str:
    return col.split_notes.get(line.task, "") if line.part == "table4" and text not in (NOT_RUN, NA) else ""
