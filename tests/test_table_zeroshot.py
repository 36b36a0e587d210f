"""The leaderboard's zero-shot classification section: results of protocol `zeroshot` written through the real
writer, a row per dataset in Table 4's vision order, its own average, the paper's column beside them, and Table 4
untouched."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from mmbench.cli import main
from mmbench.errors import DataError
from mmbench.results import store
from mmbench.results.layout import layout_of
from mmbench.results.schema import TaskResult
from mmbench.results.table import check, render, write, zeroshot_csv_path
from mmbench.results.zeroshot_table import LAYOUT_FILE, load_layout

REPO = Path(__file__).resolve().parents[1]
REPORTED = REPO / "results" / "reported"
SECTION = "Zero-shot classification"
OTHER = "Zero-shot classification, not comparable to the paper: synthetic data, `--limit` subsets or random weights"
PAPER = "CLIP ViT-B/16 400M (paper)"
LAYOUT = load_layout(REPORTED / LAYOUT_FILE)
SCORE = {r.task: r.score for r in LAYOUT.rows}


def _zs(model: str, task: str, value: float | None, **kw) -> TaskResult:
    """A result as the zero-shot protocol writes it; `value=None`: status n/a (a model without CONTRASTIVE)."""
    primary = SCORE.get(task, "top1")
    scores = {} if value is None else {"top1": value, "top5": min(100.0, value + 5), "mean_per_class": value}
    return TaskResult(
        model=model,
        task=task,
        domain="vision",
        protocol="zeroshot",
        status="ok" if value is not None else "n/a",
        metrics={k: v / 100 for k, v in scores.items()},
        scores=scores,
        primary=primary,
        n_samples=40,
        data_source=kw.pop("data_source", "real"),
        limit=kw.pop("limit", None),
        config={"task": {"data": {"split": "test"}}},
        config_hash="0" * 16,
        provenance={"wall_seconds": 2.0},
        reason=None if value is not None else f"{model} has no CONTRASTIVE capability",
        random_init=kw.pop("random_init", False),
    )


def _table4_result(model: str, task: str, value: float) -> TaskResult:
    return TaskResult(
        model=model,
        task=task,
        domain="vision",
        protocol="linear_probe",
        status="ok",
        metrics={"top1": value / 100},
        scores={"top1": value},
        primary="top1",
        n_samples=10,
        data_source="real",
        limit=None,
        config={"task": {"data": {"split": "test"}}},
        config_hash="1" * 16,
        provenance={"wall_seconds": 1.0},
    )


def _sections(markdown: str) -> dict[str, str]:
    return {p.split("\n", 1)[0]: p for p in markdown.split("\n## ")[1:]}


def _table(section: str) -> dict[str, dict[str, str]]:
    """{row label: {column header: cell}} of a section's table."""
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]
    header, body = split[0], split[2:]
    return {row[0]: dict(zip(header[2:], row[2:])) for row in body}


def _notes(section: str) -> dict[str, str]:
    return dict(ln[3:].split("] ", 1) for ln in section.splitlines() if ln.startswith("- ["))


# Two full columns: every one of the 22 rows, so each has an average; clip scores i+50 on row i
FULL = {r.task: 50.0 + i for i, r in enumerate(LAYOUT.rows)}


@pytest.fixture
def results_dir(tmp_path) -> Path:
    out = tmp_path / "results"
    for task, value in FULL.items():
        store.write(out, _zs("clip", task, value))
        store.write(out, _zs("flamingo", task, None))  # n/a everywhere: counts 0
    store.write(out, _zs("flava", "cifar10_zeroshot", 80.0))  # one row only: no average
    store.write(out / "synthetic", _zs("clip-tiny", "cifar10_zeroshot", 12.5, data_source="synthetic"))
    store.write(out, _zs("beit3-tiny", "cifar10_zeroshot", 9.0, random_init=True))
    return out


def test_rows_follow_table4_vision_order_and_each_row_uses_its_linear_probe_primary():
    table4 = layout_of([REPORTED])
    vision = [r for r in table4.rows if r.domain == "vision"]
    assert [r.task + "_zeroshot" for r in vision] == [r.task for r in LAYOUT.rows]
    assert [(r.score, r.label) for r in vision] == [(r.score, r.label) for r in LAYOUT.rows]
    for row in LAYOUT.rows:  # the probe task's own YAML names the same primary
        probe = (REPO / "tasks" / "vision" / f"{row.task.removesuffix('_zeroshot')}.yaml").read_text()
        expected = "mean_per_class" if "primary: mean_per_class" in probe else "top1"
        assert row.score == expected, row.task


def test_cells_averages_and_the_na_rule(results_dir):
    section = _sections(render(results_dir).markdown)[SECTION]
    table = _table(section)
    assert len([k for k in table if k != "**Average**"]) == 22
    assert table["CIFAR10"]["clip"] == f"{FULL['cifar10_zeroshot']:.2f}" and table["CIFAR10"]["flava"] == "80.00"
    assert table["FGVC Aircraft"]["clip"] == f"{FULL['aircraft_zeroshot']:.2f}"  # from scores.mean_per_class
    assert table["ImageNet"]["flava"] == "—"
    average = table["**Average**"]
    assert average["clip"] == f"{sum(FULL.values()) / 22:.2f}" == "60.50"
    assert average["flamingo"] == "0.00"  # n/a counts 0 in every row, as in Table 4
    assert average["flava"] == "—"  # 21 rows not run: a partial mean would look like a real one
    na = table["CIFAR10"]["flamingo"]
    assert na.startswith("n/a [") and _notes(section)[na[5:-1]] == "flamingo: flamingo has no CONTRASTIVE capability"


def test_the_paper_column_carries_its_numbers_its_source_and_its_footnotes(results_dir):
    section = _sections(render(results_dir).markdown)[SECTION]
    table, notes = _table(section), _notes(section)
    data = json.loads((REPORTED / "clip-400m.json").read_text())
    labels = {r.task: r.label for r in LAYOUT.rows}
    assert data["zeroshot"] and set(data["zeroshot"]) | set(data["zeroshot_empty"]) == set(labels)
    for task, value in data["zeroshot"].items():
        cell = table[labels[task]][PAPER]
        assert cell.split(" [")[0] == f"{value:.2f}"
        if data["zeroshot_metrics"][task] != SCORE[task]:  # a metric not recorded, or not the row's: footnoted
            assert "this row is" in notes[cell.split(" [")[1][:-1]]
        assert task in data["zeroshot_provenance"] and "https://" in data["zeroshot_provenance"][task]
    for task, why in data["zeroshot_empty"].items():
        cell = table[labels[task]][PAPER]
        assert cell.startswith("— [") and notes[cell[3:-1]] == f"{PAPER}: {why}"
    source = next(ln for ln in section.splitlines() if ln.startswith(f"- {PAPER}: "))
    assert "arXiv 2103.00020" in source and "Table 11" in source and 'column "CLIP-ViT B/16"' in source
    assert table["**Average**"][PAPER] == "—"  # the paper column is incomplete: no average
    assert PAPER not in _sections(render(results_dir).markdown)[OTHER]


def test_a_paper_metric_other_than_the_rows_is_footnoted_and_a_matching_one_is_not(results_dir, tmp_path):
    rep = tmp_path / "rep"
    rep.mkdir()
    block = {
        "name": "Some paper",
        "source": "Somebody et al., Table 9",
        "zeroshot": {"aircraft_zeroshot": 30.0, "cifar10_zeroshot": 91.25},
        "zeroshot_metrics": {"aircraft_zeroshot": "top1", "cifar10_zeroshot": "top1"},
    }
    (rep / "some.json").write_text(json.dumps(block))
    section = _sections(render(results_dir, rep).markdown)[SECTION]
    table, notes = _table(section), _notes(section)
    assert table["CIFAR10"]["Some paper"] == "91.25"  # top-1 on a top-1 row: no note
    cell = table["FGVC Aircraft"]["Some paper"]
    assert notes[cell.split(" [")[1][:-1]] == (
        "Some paper: FGVC Aircraft: the source reports top1; this row is mean per class"
    )


def test_other_results_go_to_their_own_section(results_dir):
    sections = _sections(render(results_dir).markdown)
    main_columns = set(_table(sections[SECTION])["CIFAR10"])
    other = _table(sections[OTHER])
    assert main_columns == {"clip", "flamingo", "flava", PAPER}
    assert other["CIFAR10"] == {"beit3-tiny (real, random init)": "9.00", "clip-tiny (synthetic)": "12.50"}
    assert other["**Average**"] == {"beit3-tiny (real, random init)": "—", "clip-tiny (synthetic)": "—"}


# --- Table 4 is untouched ----------------------------------------------------------------------------------------


def test_zeroshot_results_change_no_table4_line(results_dir, tmp_path):
    table4 = tmp_path / "table4-only"
    for model, value in (("clip", 91.0), ("flava", 88.5)):
        store.write(table4, _table4_result(model, "cifar10", value))
    before = render(table4)
    for path in sorted(results_dir.rglob("*.json")):  # the same models' zero-shot results beside them
        dest = table4 / path.relative_to(results_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    after = render(table4)
    assert before.zeroshot_csv == "" and SECTION not in before.markdown
    assert after.markdown.startswith(before.markdown + f"\n## {SECTION}\n")  # every Table-4 line, byte for byte
    assert after.csv == before.csv
    assert "cifar10_zeroshot" not in after.markdown.split(f"\n## {SECTION}\n")[0]  # not even as an "other task"


def test_the_zeroshot_section_comes_before_the_incontext_one(results_dir):
    from tests.test_table_incontext import SECTION as INCONTEXT
    from tests.test_table_incontext import _icl

    store.write(results_dir, _icl("flamingo", "vqav2_fewshot", 4, [47.25]))
    board = render(results_dir)
    assert 0 < board.markdown.index(f"\n## {SECTION}\n") < board.markdown.index(f"\n## {INCONTEXT}\n")
    assert board.zeroshot_csv and board.incontext_csv


def test_committed_leaderboard_has_a_zeroshot_section_only_with_zeroshot_results(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for sub in ("runs", "synthetic/runs"):
        if (REPO / "results" / sub).is_dir():
            shutil.copytree(REPO / "results" / sub, results / sub)
    board = render(results, plots=True, cost=True)  # as `mmbench table` writes the committed file
    zeroshot = [p for p in results.rglob("*.json") if store.read(p).protocol == "zeroshot"]
    assert (SECTION in board.markdown) == bool(zeroshot) == bool(board.zeroshot_csv)
    assert check(board, REPO / "results" / "LEADERBOARD.md") == []
    assert zeroshot_csv_path(REPO / "results" / "LEADERBOARD.md").is_file() == bool(zeroshot)


# --- the zero-shot CSV ---------------------------------------------------------------------------------------------


def test_zeroshot_csv_holds_the_markdown_cells(results_dir):
    board = render(results_dir)
    by_table = {"zeroshot": SECTION, "zeroshot_not_comparable": OTHER}
    parsed = list(csv.DictReader(io.StringIO(board.zeroshot_csv)))
    tables = {name: _table(_sections(board.markdown)[name]) for name in by_table.values()}
    assert len(parsed) == sum(len(t) * len(next(iter(t.values()))) for t in tables.values())
    for r in parsed:
        label = "**Average**" if r["part"] == "average" else r["row"]
        cell = tables[by_table[r["table"]]][label][r["column"]]
        if cell.startswith("—"):
            assert r["value"] == ""
        elif cell.startswith("n/a ["):
            assert r["value"] == "n/a" and r["note"]
        else:
            assert cell.split(" [")[0] == r["value"]


def test_write_check_and_a_stale_zeroshot_csv(results_dir, tmp_path):
    out = tmp_path / "board" / "LEADERBOARD.md"
    board = render(results_dir)
    write(board, out)
    assert zeroshot_csv_path(out).read_text() == board.zeroshot_csv and check(board, out) == []
    zeroshot_csv_path(out).write_text(board.zeroshot_csv.replace("80.00", "80.01"))
    problems = check(board, out)
    assert len(problems) == 1 and "LEADERBOARD-zeroshot.csv:" in problems[0] and "80.01" in problems[0]
    for path in results_dir.rglob("*_zeroshot.json"):
        path.unlink()
    store.write(results_dir, _table4_result("clip", "cifar10", 91.0))
    plain = render(results_dir)
    assert check(plain, out)[-1] == (
        f"{zeroshot_csv_path(out)}: a fresh render has no zero-shot results; run `mmbench table` to remove it"
    )
    write(plain, out)
    assert not zeroshot_csv_path(out).exists() and check(plain, out) == []


def test_cli_table_writes_and_checks_the_zeroshot_csv(results_dir):
    assert main(["table", "--results", str(results_dir)]) == 0
    assert (results_dir / "LEADERBOARD-zeroshot.csv").is_file()
    assert main(["table", "--results", str(results_dir), "--check"]) == 0
    (results_dir / "LEADERBOARD-zeroshot.csv").unlink()
    assert main(["table", "--results", str(results_dir), "--check"]) == 1


# --- bad inputs ------------------------------------------------------------------------------------------------------


def test_bad_zeroshot_inputs_name_the_file_and_key(tmp_path):
    res = _zs("clip", "cifar10_zeroshot", 50.0)
    res.scores.pop("top1")
    path = store.write(tmp_path / "a", res)
    with pytest.raises(DataError, match=rf"{path}: missing key 'scores\.top1' \(the zero-shot table's score"):
        render(tmp_path / "a")
    shutil.copytree(REPORTED, tmp_path / "rep")
    rep = tmp_path / "rep" / "clip-400m.json"
    data = json.loads(rep.read_text())
    data["zeroshot"]["cifar11_zeroshot"] = 1.0
    rep.write_text(json.dumps(data))
    store.write(tmp_path / "b", _zs("clip", "cifar10_zeroshot", 50.0))
    with pytest.raises(DataError, match=r"clip-400m\.json: key 'zeroshot\.cifar11_zeroshot': task is not a row of"):
        render(tmp_path / "b", tmp_path / "rep")
    del data["zeroshot"]["cifar11_zeroshot"]
    del data["zeroshot_metrics"]["eurosat_zeroshot"]
    rep.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"clip-400m\.json: missing key 'zeroshot_metrics\.eurosat_zeroshot'"):
        render(tmp_path / "b", tmp_path / "rep")
