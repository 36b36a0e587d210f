"""The leaderboard's pictures: written by `mmbench table` as PNG + SVG, embedded in the markdown, byte-stable when
drawn twice, marked when not reference-grade, and checked by the key of what they plot."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from mmbench.cli import main
from mmbench.results import load, plot
from mmbench.results.layout import LAYOUT_FILE, load_layout, load_reported
from mmbench.results.table import render

REPO = Path(__file__).resolve().parents[1]
REPORTED = REPO / "results" / "reported"
LAYOUT = load_layout(REPORTED / LAYOUT_FILE)
MARK = "synthetic data, random weights -- not a real model's numbers"


def _results(tmp_path: Path, model: str = "clip-tiny") -> Path:
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "synthetic" / "runs" / model, results / "runs" / model)
    return results


def test_table_writes_embeds_and_checks_the_pictures_and_a_second_draw_is_byte_identical(tmp_path, capsys):
    results = _results(tmp_path)
    assert main(["table", "--results", str(results)]) == 0
    markdown = (results / "LEADERBOARD.md").read_text()
    links = re.findall(r"\]\((plots/[^)]+)\)", markdown)
    stems = [f"clip-tiny-synthetic-random-init-{k}" for k in ("domains", "language", "vision", "multimodal")]
    assert sorted(links) == sorted(f"plots/{s}{x}" for s in stems for x in plot.SUFFIXES)  # each once
    assert f"![clip-tiny (synthetic, random init): domain averages](plots/{stems[0]}.png)" in markdown
    for stem in stems:
        png, svg = results / "plots" / f"{stem}.png", results / "plots" / f"{stem}.svg"
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width >= 600 and im.height >= 300
        root = ET.parse(svg).getroot()  # well-formed SVG
        assert root.tag.endswith("svg")
        text = svg.read_text()
        assert MARK in text and "(paper)" in text and "<pattern" in text  # marked; the paper's bars hatched
        assert "<dc:date>" not in text and plot.KEY_PREFIX in text and plot.KEY_PREFIX.encode() in png.read_bytes()
    # drawn again elsewhere (two of them, to save time): the same bytes
    again = tmp_path / "again"
    board = render(results, REPORTED, plots=True)
    plot.draw([p for p in board.pictures if p.kind in ("domains", "vision")], again)
    for stem in (stems[0], stems[2]):
        for suffix in plot.SUFFIXES:
            assert (again / f"{stem}{suffix}").read_bytes() == (results / "plots" / f"{stem}{suffix}").read_bytes()
    assert main(["table", "--results", str(results), "--check"]) == 0
    capsys.readouterr()


def test_check_names_a_missing_picture_one_of_other_data_and_a_stale_one(tmp_path):
    results = _results(tmp_path)
    board = render(results, REPORTED, plots=True)
    pictures = list(board.pictures)
    out = tmp_path / "plots"
    plot.draw(pictures[:1], out)  # only the domain chart
    assert plot.check(pictures[:1], out) == []
    # the same picture for other data: a changed score changes its key
    path = results / "runs" / "clip-tiny" / "rte.json"
    d = json.loads(path.read_text())
    d["scores"]["accuracy"] += 1.0
    path.write_text(json.dumps(d))
    changed = list(render(results, REPORTED, plots=True).pictures)
    assert changed[0].stem == pictures[0].stem and changed[0].key != pictures[0].key
    problems = plot.check(changed, out)
    assert problems[0] == f"{out / pictures[0].stem}.png: plots other data than a fresh render ({changed[0].key}); " + (
        "run `mmbench table`"
    )
    assert f"{out / pictures[1].stem}.png: missing; run `mmbench table` to draw it" in problems
    # a picture of a column that is gone is stale: named by check, removed by the next draw
    assert plot.check([], out) == [
        f"{out / pictures[0].stem}{s}: no such picture in a fresh render; run `mmbench table` to remove it"
        for s in (".png", ".svg")
    ]
    (out / "mine.png").write_bytes(b"a user's picture")  # not drawn by mmbench: never touched
    plot.draw([], out)
    assert sorted(p.name for p in out.iterdir()) == ["mine.png"]


def test_the_pictures_plot_the_frames_averages_beside_the_papers_and_mark_only_what_is_not_reference(tmp_path):
    results = _results(tmp_path)
    frame = load(results)
    pictures = plot.plan(frame, LAYOUT, load_reported(REPORTED, LAYOUT))
    domains = pictures[0]
    assert domains.labels == ("NLP Avg", "Vision Avg", "Multimodal Avg", "Macro Avg")
    assert [s.paper for s in domains.series] == [False, True, True, True]
    assert domains.series[1].values == (78.19, 79.44, 69.92, 75.85)  # FLAVA as the paper prints it
    table = render(results, REPORTED).markdown.split("## Not comparable")[1]
    printed = [ln.split(" | ")[-1].strip(" |") for ln in table.splitlines() if ln.startswith("| ") and "Avg |" in ln]
    assert [f"{v:.2f}" for v in domains.series[0].values] == printed  # the leaderboard's averages
    assert domains.marker == MARK
    # the same results as if real: reference-grade, no watermark
    for path in (results / "runs" / "clip-tiny").glob("*.json"):
        d = json.loads(path.read_text())
        path.write_text(json.dumps({**d, "data_source": "real", "random_init": False}))
    real = plot.plan(load(results), LAYOUT, load_reported(REPORTED, LAYOUT))
    assert real[0].column == "clip-tiny" and {p.marker for p in real} == {""}
    vision = next(p for p in real if p.kind == "vision")
    assert len(vision.labels) == 22 and vision.labels[0] == "ImageNet"


def test_no_plots_leaves_the_pictures_out(tmp_path):
    results = _results(tmp_path, "idefics-tiny")
    assert main(["table", "--results", str(results), "--no-plots"]) == 0
    assert "## Pictures" not in (results / "LEADERBOARD.md").read_text() and not (results / "plots").exists()
