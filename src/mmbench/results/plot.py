"""The leaderboard's pictures: per measured Table-4 column, its domain averages beside the paper's columns, and one
chart per domain of its task scores beside the paper's.

    pictures = plan(frame, layout, reported)     # -> [Picture]: what each picture plots (no matplotlib needed)
    paths = draw(pictures, out_dir)              # -> PNG + SVG files of each, written atomically
    problems = check(pictures, out_dir)          # -> [] when every picture exists and plots the same data
    lines = markdown(pictures, "plots")          # -> the leaderboard's "Pictures" section

Measured bars are solid; the paper's are lighter, hatched and labelled "(paper)". A column that is not
reference-grade (synthetic data, a `--limit` subset, random weights) carries a watermark saying so.

Output is byte-stable on the same matplotlib/freetype versions: no dates or software names in the files, a fixed SVG
hash salt, the bundled DejaVu Sans font. Across versions the pixels may differ, so `check` does not compare bytes:
every file embeds its `Picture.key` (a hash of exactly what it plots, in the PNG/SVG "Description"), and a picture
is up to date when its files exist and hold the key of a fresh plan. matplotlib is imported only by `draw`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mmbench.results.cells import fmt, md

if TYPE_CHECKING:
    import pandas as pd

    from mmbench.results.layout import Layout, Reported

STYLE = 1  # bump when the drawing changes, so that `check` asks for the pictures to be redrawn
KEY_PREFIX = "mmbench-plot:"
SUFFIXES = (".png", ".svg")
_MEASURED = "#1f4e9a"
_PAPER = ("#f2a65a", "#9ccf8a", "#c9a0dc", "#e3d26f")  # light, so the measured bar stands out
_HATCH = "///"


@dataclass(frozen=True)
class Series:
    name: str
    values: tuple[float | None, ...]  # one per label; None: not run
    paper: bool
    na: tuple[bool, ...] = ()  # per label: the model cannot do the task (drawn as 0 and labelled n/a)


@dataclass(frozen=True)
class Picture:
    stem: str  # file name without suffix, e.g. "clip-tiny-synthetic-random-init-vision"
    column: str  # the leaderboard column it shows
    kind: str  # "domains" | a domain name
    title: str
    labels: tuple[str, ...]
    series: tuple[Series, ...]
    marker: str  # the watermark ("" for a reference-grade column)

    @property
    def key(self) -> str:
        """A hash of what the picture plots and how (STYLE): the same key means the same picture."""
        text = json.dumps({"style": STYLE, **asdict(self)}, sort_keys=True, allow_nan=False)
        return KEY_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def marker_of(frame: pd.DataFrame, column: str) -> str:
    """What makes a column not comparable to the paper, as the watermark says it; "" for a reference column."""
    rows = frame[frame.column == column]
    if rows.reference.all():
        return ""
    parts = []
    parts += ["synthetic data"] if (rows.data_source == "synthetic").any() else []
    limits = sorted({int(x) for x in rows.limit.dropna()})
    parts += [f"--limit {', '.join(map(str, limits))} subset"] if limits else []
    parts += ["random weights"] if rows.random_init.any() else []
    return f"{', '.join(parts or ['not reference-grade'])} -- not a real model's numbers"


def plan(frame: pd.DataFrame, layout: Layout, reported: list[Reported]) -> list[Picture]:
    """The pictures of every measured Table-4 column of `frame` (`mmbench.results.load`), reference ones first."""
    from mmbench.results.frame import domain_averages, table4
    from mmbench.results.table import domain_averages as reported_averages

    grid, averages = table4(frame, layout), domain_averages(frame, layout)
    t4 = frame[frame.column.isin(grid.columns)]
    na = {(c, t) for c, t in t4[t4.status != "ok"][["column", "task"]].itertuples(index=False)}
    papers = [(rep.name, rep.scores, rep.averages or reported_averages(rep.scores, layout)) for rep in reported]
    names = [d.name for d in layout.domains] + ["macro"]
    labels = tuple(d.average for d in layout.domains) + ("Macro Avg",)
    reference = set(t4[t4.reference].column)
    out = []
    for column in sorted(grid.columns, key=lambda c: (c not in reference, c)):
        marker = marker_of(frame, column)
        bars = Series(column, tuple(_value(averages.loc[column, n]) for n in names), paper=False)
        paper = tuple(Series(p, tuple(a[n] for n in names), paper=True) for p, _, a in papers)
        title = f"{column}: domain averages"
        out.append(Picture(f"{slug(column)}-domains", column, "domains", title, labels, (bars, *paper), marker))
        for domain in layout.domains:
            rows = layout.rows_of(domain.name)
            values = tuple(_value(grid.loc[(domain.name, r.task, r.score), column]) for r in rows)
            flags = tuple((column, r.task) in na for r in rows)
            series = (Series(column, values, paper=False, na=flags),) + tuple(
                Series(p, tuple(s[r.task][r.score] for r in rows), paper=True) for p, s, _ in papers
            )
            title = f"{column}: {domain.heading} tasks"
            row_labels = tuple(r.label for r in rows)
            out.append(Picture(f"{slug(column)}-{domain.name}", column, domain.name, title, row_labels, series, marker))
    return out


def _value(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def markdown(pictures: list[Picture], folder: str) -> list[str]:
    """The "Pictures" section: each column's domain chart inline, links to its per-domain charts and the SVGs."""
    if not pictures:
        return []
    lines = [
        "## Pictures",
        "",
        f"Drawn by `mmbench table` from the same results (`--no-plots` leaves them out); PNG and SVG in `{folder}/`. "
        "Solid bars: measured; lighter hatched bars: the paper's columns. Pictures of results that are not "
        "comparable to the paper carry a watermark saying why.",
    ]
    by_column: dict[str, list[Picture]] = {}
    for p in pictures:
        by_column.setdefault(p.column, []).append(p)
    for column, pics in by_column.items():
        main = next(p for p in pics if p.kind == "domains")
        links = ", ".join(f"[{p.kind}]({folder}/{p.stem}.png)" for p in pics if p.kind != "domains")
        svgs = ", ".join(f"[{p.kind}]({folder}/{p.stem}.svg)" for p in pics)
        lines += ["", f"### {md(column)}", "", f"![{md(main.title)}]({folder}/{main.stem}.png)", ""]
        lines.append(f"Per task: {links}. SVG: {svgs}.")
    return lines


def check(pictures: list[Picture], out_dir: Path) -> list[str]:
    """Each picture's files exist and embed the key of what it should plot; no other mmbench picture is there."""
    out_dir = Path(out_dir)
    problems = []
    for pic in pictures:
        for suffix in SUFFIXES:
            path = out_dir / f"{pic.stem}{suffix}"
            if not path.is_file():
                problems.append(f"{path}: missing; run `mmbench table` to draw it")
            elif pic.key.encode() not in path.read_bytes():
                problems.append(f"{path}: plots other data than a fresh render ({pic.key}); run `mmbench table`")
    problems += [
        f"{p}: no such picture in a fresh render; run `mmbench table` to remove it" for p in _stale(pictures, out_dir)
    ]
    return problems


def _stale(pictures: list[Picture], out_dir: Path) -> list[Path]:
    """Pictures mmbench drew earlier (they embed a key) that a fresh render no longer has."""
    fresh = {f"{p.stem}{s}" for p in pictures for s in SUFFIXES}
    found = sorted(p for s in SUFFIXES for p in Path(out_dir).glob(f"*{s}"))
    return [p for p in found if p.name not in fresh and KEY_PREFIX.encode() in p.read_bytes()]


def draw(pictures: list[Picture], out_dir: Path) -> list[Path]:
    """Write each picture as PNG and SVG under `out_dir` (atomically) and remove the ones a fresh render lacks."""
    import io

    import matplotlib
    from matplotlib.figure import Figure

    from mmbench.paths import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in _stale(pictures, out_dir):
        path.unlink()
    written = []
    # SVG text stays text (a fifth of the size of glyph paths, and searchable: the watermark is in the file)
    style = {"svg.hashsalt": "mmbench", "svg.fonttype": "none", "font.family": "DejaVu Sans", "font.size": 9}
    with matplotlib.rc_context(style):
        for pic in pictures:
            fig = Figure(figsize=_size(pic), dpi=100, layout="constrained")
            (_domains if pic.kind == "domains" else _tasks)(fig, pic)
            for suffix, meta in ((".png", {"Software": None}), (".svg", {"Date": None, "Creator": None})):
                buf = io.BytesIO()
                fig.savefig(buf, format=suffix[1:], metadata={**meta, "Description": pic.key})
                path = out_dir / f"{pic.stem}{suffix}"
                data = buf.getvalue()
                atomic_write(path, lambda tmp, data=data: tmp.write_bytes(data))
                written.append(path)
    return written


def _size(pic: Picture) -> tuple[float, float]:
    if pic.kind == "domains":
        return 8.0, 4.6
    return 8.0, 1.6 + 0.16 * len(pic.labels) * len(pic.series)


def _bar_style(s: Series, i: int) -> dict:
    if not s.paper:
        return {"color": _MEASURED, "edgecolor": _MEASURED, "label": f"{s.name} (measured)"}
    colour = _PAPER[i % len(_PAPER)]
    return {"color": colour, "edgecolor": "#555555", "hatch": _HATCH, "linewidth": 0.6, "label": s.name}


def _domains(fig, pic: Picture) -> None:
    """Grouped vertical bars: a group per average, a bar per series, the value on top of each."""
    ax = fig.add_subplot()
    width = 0.8 / len(pic.series)
    for i, s in enumerate(pic.series):
        xs = [g + (i - (len(pic.series) - 1) / 2) * width for g in range(len(pic.labels))]
        heights = [0.0 if v is None else v for v in s.values]
        ax.bar(xs, heights, width * 0.95, **_bar_style(s, i - 1))
        for x, v in zip(xs, s.values):
            text = "not run" if v is None else fmt(v, 1)
            ax.text(x, (v or 0) + 1, text, ha="center", va="bottom", fontsize=7, rotation=90 if s.paper else 0)
    ax.set_xticks(range(len(pic.labels)), pic.labels)
    ax.set_ylim(min(0.0, *[v for s in pic.series for v in s.values if v is not None]) - 1, 112)
    ax.set_ylabel("score (0-100)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=2, fontsize=8, frameon=False)
    _frame(fig, ax, pic)


def _tasks(fig, pic: Picture) -> None:
    """Horizontal grouped bars (labels stay legible for the 22 vision tasks): a group per task in Table-4 order."""
    ax = fig.add_subplot()
    n = len(pic.series)
    height = 0.8 / n
    values = [v for s in pic.series for v in s.values if v is not None]
    for i, s in enumerate(pic.series):
        ys = [g + (i - (n - 1) / 2) * height for g in range(len(pic.labels))]
        ax.barh(ys, [0.0 if v is None else v for v in s.values], height * 0.95, **_bar_style(s, i - 1))
        if s.paper:
            continue
        for j, (y, v) in enumerate(zip(ys, s.values)):
            na = bool(s.na) and s.na[j]
            text = "n/a" if na else "not run" if v is None else fmt(v, 1)
            ax.text((v or 0) + 0.8, y, text, va="center", fontsize=7, color=_MEASURED, fontweight="bold")
    ax.set_yticks(range(len(pic.labels)), pic.labels)
    ax.set_ylim(len(pic.labels) - 0.5, -0.5)  # Table-4 order from the top, no empty margin
    ax.set_xlim(min(0.0, *values) - 1, 108)
    ax.set_xlabel("score (0-100)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6 / fig.get_figheight()), ncols=2, fontsize=8, frameon=False)
    _frame(fig, ax, pic)


def _frame(fig, ax, pic: Picture) -> None:
    fig.suptitle(pic.title, fontsize=11, fontweight="bold")
    ax.grid(axis="x" if pic.kind != "domains" else "y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if pic.marker:
        fig.text(0.5, 0.5, pic.marker, ha="center", va="center", rotation=20, fontsize=15, color="#c0392b", alpha=0.3)
        ax.set_title(pic.marker, fontsize=9, color="#c0392b")
