"""The leaderboard's in-context (few-shot) section: results of protocol `incontext` written through the real writer,
rendered per task by shot count beside OpenFlamingo-4B's published numbers, and kept out of Table 4."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest

from mmbench.cli import main
from mmbench.errors import DataError
from mmbench.results import store
from mmbench.results.layout import INCONTEXT_FILE, load_incontext_layout
from mmbench.results.schema import TaskResult
from mmbench.results.table import check, incontext_csv_path, render, write

REPO = Path(__file__).resolve().parents[1]
REPORTED = REPO / "results" / "reported"
SECTION = "In-context (few-shot)"
OTHER = "In-context (few-shot), not comparable to the paper: synthetic data, `--limit` subsets or random weights"
PAPER = "OpenFlamingo-4B (paper)"
SCORE = {"vqav2_fewshot": "vqa_accuracy", "hateful_memes_fewshot": "roc_auc"}


def _icl(model: str, task: str, shots: int, trials: list[float] | None, demonstrations: str = "random", **kw):
    """A result as the in-context protocol writes it: the mean over `trials` in `scores`, the per-seed scores and
    their sample std (ddof=1) in `details`; `trials=None`: status n/a (a model that cannot generate)."""
    score = kw.pop("score", SCORE.get(task))
    details: dict = {"shots": shots, "demonstrations": demonstrations}
    scores: dict[str, float] = {}
    if trials is not None:
        scores = {score: round(statistics.fmean(trials), 4)}
        details["trials"] = [{"seed": 42 + i, "scores": {score: t}} for i, t in enumerate(trials)]
        details["std"] = {score: statistics.stdev(trials) if len(trials) > 1 else 0.0}
    return TaskResult(
        model=model,
        task=task,
        domain="multimodal",
        protocol="incontext",
        status="ok" if trials is not None else "n/a",
        metrics={k: v / 100 for k, v in scores.items()},
        scores=scores,
        primary=score,
        n_samples=50,
        data_source=kw.pop("data_source", "real"),
        limit=kw.pop("limit", None),
        config={"task": {"shots": shots}},
        config_hash="0" * 16,
        provenance={"wall_seconds": 3.0},
        reason=None if trials is not None else f"{model} has no GENERATE capability",
        details={**details, **kw.pop("details", {})},
        random_init=kw.pop("random_init", False),
    )


def _write(out: Path, res: TaskResult) -> Path:
    """Through the real writer, which names the file `<task>-<shots>shot[-rices].json`; the table reads the shot
    count and the selection from the result, never from the file name."""
    path = store.write(out, res)
    rices = "-rices" if res.details.get("demonstrations") == "rices" else ""
    assert path.name == f"{res.task}-{res.details['shots']}shot{rices}.json"
    return path


def _table4_result(model: str, task: str, value: float) -> TaskResult:
    return TaskResult(
        model=model,
        task=task,
        domain="language",
        protocol="finetune",
        status="ok",
        metrics={"accuracy": value / 100},
        scores={"accuracy": value},
        primary="accuracy",
        n_samples=10,
        data_source="real",
        limit=None,
        config={"task": {"data": {"split": "validation"}}},
        config_hash="1" * 16,
        provenance={"wall_seconds": 1.0},
    )


def _sections(markdown: str) -> dict[str, str]:
    parts = markdown.split("\n## ")
    return {p.split("\n", 1)[0]: p for p in parts[1:]}


def _tables(section: str) -> dict[str, dict[tuple[str, str], dict[str, str]]]:
    """{task title: {(model, demonstrations): {"4-shot": cell}}} of a section's per-task tables."""
    out = {}
    for part in section.split("\n### ")[1:]:
        title = part.split("\n", 1)[0]
        lines = [ln for ln in part.splitlines() if ln.startswith("|")]
        split = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]
        header, body = split[0], split[2:]
        out[title] = {(row[0], row[1]): dict(zip(header[2:], row[2:])) for row in body}
    return out


def _notes(section: str) -> dict[str, str]:
    return dict(ln[3:].split("] ", 1) for ln in section.splitlines() if ln.startswith("- ["))


@pytest.fixture
def results_dir(tmp_path) -> Path:
    out = tmp_path / "results"
    _write(out, _icl("flamingo", "vqav2_fewshot", 0, [40.0, 41.5, 43.0]))  # 3 trials: mean ± std
    _write(out, _icl("flamingo", "vqav2_fewshot", 4, [47.25]))  # 1 trial: the mean alone
    _write(out, _icl("flamingo", "vqav2_fewshot", 4, [60.0, 62.0], demonstrations="rices"))
    _write(out, _icl("flamingo", "hateful_memes_fewshot", 8, [55.0, 57.0, 59.0]))
    _write(out, _icl("clip", "vqav2_fewshot", 4, None))  # n/a, at one shot count
    _write(out, _icl("flava", "hateful_memes_fewshot", 0, None, details={"shots": None, "demonstrations": None}))
    _write(out / "synthetic", _icl("flamingo-tiny", "vqav2_fewshot", 4, [12.5, 13.5], data_source="synthetic"))
    _write(out, _icl("idefics-tiny", "vqav2_fewshot", 8, [3.0], random_init=True))
    return out


# --- the section's cells ---------------------------------------------------------------------------------------


def test_cells_show_mean_mean_plus_std_missing_and_na(results_dir):
    board = render(results_dir)
    section = _sections(board.markdown)[SECTION]
    vqa = _tables(section)["VQAv2 (VQA accuracy)"]
    trials = [40.0, 41.5, 43.0]
    zero = vqa[("flamingo", "random")]["0-shot"]
    assert zero == f"{statistics.fmean(trials):.2f} ± {statistics.stdev(trials):.2f}" == "41.50 ± 1.50"
    assert vqa[("flamingo", "random")]["4-shot"] == "47.25"  # one trial: no spread to show
    assert vqa[("flamingo", "random")]["8-shot"] == vqa[("flamingo", "random")]["32-shot"] == "—"
    na = vqa[("clip", "random")]["4-shot"]
    assert na.startswith("n/a [") and vqa[("clip", "random")]["0-shot"] == "—"
    assert _notes(section)[na[5:-1]] == "clip: clip has no GENERATE capability"
    # an n/a result naming no shot count or selection fills its model's whole row
    memes = _tables(section)["Hateful Memes (ROC-AUC)"]
    assert all(cell.startswith("n/a [") for cell in memes[("flava", "—")].values())
    assert memes[("flamingo", "random")]["8-shot"] == "57.00 ± 2.00"
    assert ("flamingo", "—") not in memes and ("clip", "—") in memes  # clip: nothing for this task, one row of —
    assert set(memes[("clip", "—")].values()) == {"—"}


def test_random_and_rices_demonstrations_are_separate_rows(results_dir):
    board = render(results_dir)
    vqa = _tables(_sections(board.markdown)[SECTION])["VQAv2 (VQA accuracy)"]
    assert vqa[("flamingo", "random")]["4-shot"] == "47.25"
    assert vqa[("flamingo", "RICES")]["4-shot"] == "61.00 ± 1.41"
    assert vqa[("flamingo", "RICES")]["0-shot"] == "—"  # the random 0-shot number does not leak into RICES
    rows = list(csv.DictReader(io.StringIO(board.incontext_csv)))
    flamingo4 = {
        r["demonstrations"]: r["value"]
        for r in rows
        if (r["task"], r["row"], r["shots"]) == ("vqav2_fewshot", "flamingo", "4")
    }
    assert flamingo4 == {"random": "47.25", "rices": "61.00"}


def test_an_unknown_demonstration_selection_names_the_file_and_key(tmp_path):
    path = _write(tmp_path, _icl("flamingo", "vqav2_fewshot", 4, [50.0], demonstrations="nearest"))
    with pytest.raises(
        DataError, match=rf"{path}: key 'details\.demonstrations': 'nearest' is not one of random, rices"
    ):
        render(tmp_path)


def test_the_paper_rows_carry_the_reported_numbers_and_their_source(results_dir):
    section = _sections(render(results_dir).markdown)[SECTION]
    tables = _tables(section)
    data = json.loads((REPORTED / "openflamingo-4b.json").read_text())["incontext"]
    for task, title in (
        ("vqav2_fewshot", "VQAv2 (VQA accuracy)"),
        ("hateful_memes_fewshot", "Hateful Memes (ROC-AUC)"),
    ):
        random, rices = data[task]["random"], data[task]["rices"]
        for shots in ("0", "4", "8", "16", "32"):
            want = f"{random['mean'][shots]:.1f} ± {random['std'][shots]:.1f}"  # as the paper prints them
            assert tables[title][(PAPER, "random")][f"{shots}-shot"] == want
            assert tables[title][(PAPER, "RICES")][f"{shots}-shot"] == f"{rices['mean'][shots]:.1f}"  # no spread
    source = next(ln for ln in section.splitlines() if ln.startswith(f"- {PAPER}: "))
    assert "arXiv 2308.01390v2" in source and "Table 11" in source and "Table 12" in source
    assert 'column "OF-4B"' in source and "population, ddof=0" in source
    # measured rows come first, then the paper's; the paper never reaches the not-comparable section
    assert list(tables["VQAv2 (VQA accuracy)"])[-2:] == [(PAPER, "random"), (PAPER, "RICES")]
    assert PAPER not in _sections(render(results_dir).markdown)[OTHER]


def test_the_reported_file_agrees_with_the_papers_main_text_table_4():
    # The paper prints the 0/4/32-shot random cells twice: main-text Table 4 and Appendix Table 11 (the data file's
    # source). Transcribed here from Table 4, OF-4B column, mean (std) over 3 seeds.
    table4 = {
        "vqav2_fewshot": {"0": (45.1, 0.1), "4": (49.0, 0.0), "32": (43.0, 0.2)},
        "hateful_memes_fewshot": {"0": (52.3, 2.3), "4": (51.5, 1.4), "32": (52.2, 1.2)},
    }
    data = json.loads((REPORTED / "openflamingo-4b.json").read_text())
    assert "scores" not in data  # no Table-4 column for a model the FLAVA paper did not evaluate
    for task, cells in table4.items():
        random = data["incontext"][task]["random"]
        assert random["trials"] == 3
        assert {k: (random["mean"][k], random["std"][k]) for k in cells} == cells


def test_measured_rows_are_reference_grade_and_the_rest_go_to_their_own_section(results_dir):
    sections = _sections(render(results_dir).markdown)
    main_rows = {model for table in _tables(sections[SECTION]).values() for model, _ in table}
    other = _tables(sections[OTHER])["VQAv2 (VQA accuracy)"]
    assert main_rows == {"clip", "flamingo", "flava", PAPER}
    assert other[("flamingo-tiny (synthetic)", "random")]["4-shot"] == "13.00 ± 0.71"
    assert other[("idefics-tiny (real, random init)", "random")]["8-shot"] == "3.00"
    assert "13.00" not in sections[SECTION] and "| 3.00 |" not in sections[SECTION]


# --- Table 4 is untouched ------------------------------------------------------------------------------------------


def test_incontext_results_change_no_table4_line(results_dir, tmp_path):
    table4 = tmp_path / "table4-only"
    for model, value in (("flamingo", 61.0), ("clip", 55.5)):
        store.write(table4, _table4_result(model, "sst2", value))
    before = render(table4)
    for path in sorted(results_dir.rglob("*.json")):  # the same models' in-context results beside them
        dest = table4 / path.relative_to(results_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    after = render(table4)
    assert before.incontext_csv == "" and SECTION not in before.markdown
    assert after.markdown.startswith(before.markdown + f"\n## {SECTION}\n")  # every Table-4 line, byte for byte
    assert after.csv == before.csv
    assert "vqav2_fewshot" not in after.markdown.split(f"\n## {SECTION}\n")[0]  # not even as an "other task"


def test_committed_leaderboard_has_an_incontext_section_only_with_incontext_results(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for sub in ("runs", "synthetic/runs"):
        if (REPO / "results" / sub).is_dir():
            shutil.copytree(REPO / "results" / sub, results / sub)
    board = render(results, plots=True, cost=True)  # as `mmbench table` writes the committed file
    incontext = [p for p in results.rglob("*.json") if store.read(p).protocol == "incontext"]
    assert (SECTION in board.markdown) == bool(incontext) == bool(board.incontext_csv)
    assert check(board, REPO / "results" / "LEADERBOARD.md") == []
    assert incontext_csv_path(REPO / "results" / "LEADERBOARD.md").is_file() == bool(incontext)


# --- the in-context CSV: same cells, written, checked and removed when stale -----------------------------------------


def test_incontext_csv_holds_the_markdown_cells(results_dir):
    board = render(results_dir)
    layout = load_incontext_layout(REPORTED / INCONTEXT_FILE)
    labels = layout.demonstrations
    titles = {t.task: f"{t.label} ({t.metric})" for t in layout.rows}
    by_table = {"incontext": SECTION, "incontext_not_comparable": OTHER}
    from_md = {}
    for name in by_table.values():
        for title, rows in _tables(_sections(board.markdown)[name]).items():
            for (row, demo), cells in rows.items():
                from_md.update({(name, title, row, demo, shot): cell for shot, cell in cells.items()})
    parsed = list(csv.DictReader(io.StringIO(board.incontext_csv)))
    assert len(parsed) == len(from_md)
    for r in parsed:
        key = (by_table[r["table"]], titles[r["task"]], r["row"], labels.get(r["demonstrations"], "—"))
        cell = from_md[(*key, f"{r['shots']}-shot")]
        if cell == "—":
            assert r["value"] == r["std"] == r["note"] == ""
        elif cell.startswith("n/a ["):
            assert r["value"] == "n/a" and r["note"]
        else:
            assert cell == (f"{r['value']} ± {r['std']}" if r["std"] else r["value"])
            assert r["trials"] in ("", "1") if not r["std"] else int(r["trials"]) >= 2


def test_write_check_and_a_stale_incontext_csv(results_dir, tmp_path):
    out = tmp_path / "board" / "LEADERBOARD.md"
    board = render(results_dir)
    write(board, out)
    assert incontext_csv_path(out).read_text() == board.incontext_csv and check(board, out) == []
    incontext_csv_path(out).write_text(board.incontext_csv.replace("41.50", "41.60"))
    problems = check(board, out)
    assert len(problems) == 1 and "LEADERBOARD-incontext.csv:" in problems[0]
    assert "committed" in problems[0] and "41.60" in problems[0] and "41.50" in problems[0]
    # the in-context results are gone: the CSV left behind is stale, and the next write removes it
    for path in results_dir.rglob("*shot*.json"):
        path.unlink()
    store.write(results_dir, _table4_result("clip", "sst2", 91.0))
    plain = render(results_dir)
    assert check(plain, out)[-1] == (
        f"{incontext_csv_path(out)}: a fresh render has no in-context results; run `mmbench table` to remove it"
    )
    write(plain, out)
    assert not incontext_csv_path(out).exists() and check(plain, out) == []


def test_cli_table_writes_and_checks_the_incontext_csv(results_dir):
    assert main(["table", "--results", str(results_dir)]) == 0
    assert (results_dir / "LEADERBOARD-incontext.csv").is_file()
    assert main(["table", "--results", str(results_dir), "--check"]) == 0
    (results_dir / "LEADERBOARD-incontext.csv").unlink()
    assert main(["table", "--results", str(results_dir), "--check"]) == 1


# --- layout as data, and bad inputs ----------------------------------------------------------------------------------


def test_a_task_or_a_shot_count_is_added_by_data_alone(tmp_path):
    reported = tmp_path / "reported"
    shutil.copytree(REPORTED, reported)
    layout = reported / INCONTEXT_FILE
    layout.write_text(
        layout.read_text() + "  - {task: okvqa_fewshot, score: vqa_accuracy, label: OK-VQA, metric: acc}\n"
    )
    _write(tmp_path / "res", _icl("flamingo", "okvqa_fewshot", 4, [80.0, 84.0], score="vqa_accuracy"))
    _write(tmp_path / "res", _icl("flamingo", "vqav2_fewshot", 2, [30.0]))  # a shot count outside the layout
    tables = _tables(_sections(render(tmp_path / "res", reported).markdown)[SECTION])
    assert list(tables) == ["VQAv2 (VQA accuracy)", "Hateful Memes (ROC-AUC)", "COCO (CIDEr)", "Flickr30K (CIDEr)",
                            "OK-VQA (acc)"]  # fmt: skip
    assert tables["OK-VQA (acc)"][("flamingo", "random")] == {
        "0-shot": "—",
        "2-shot": "—",
        "4-shot": "82.00 ± 2.83",
        "8-shot": "—",
        "16-shot": "—",
        "32-shot": "—",
    }
    assert tables["VQAv2 (VQA accuracy)"][("flamingo", "random")]["2-shot"] == "30.00"
    assert tables["VQAv2 (VQA accuracy)"][(PAPER, "random")]["2-shot"] == "—"


def test_bad_incontext_results_name_the_file_and_key(tmp_path):
    no_std = _icl("flamingo", "vqav2_fewshot", 4, [40.0, 42.0])
    del no_std.details["std"]
    path = _write(tmp_path / "a", no_std)
    with pytest.raises(DataError, match=rf"{path}: key 'details\.std\.vqa_accuracy': None is not a standard deviati"):
        render(tmp_path / "a")
    path = _write(tmp_path / "b", _icl("flamingo", "vqav2_fewshot", 4, [40.0], details={"shots": "4"}))
    with pytest.raises(DataError, match=rf"{path}: key 'details\.shots': '4' is not a number of demonstrations"):
        render(tmp_path / "b")
    first = _write(tmp_path / "c", _icl("flamingo", "vqav2_fewshot", 4, [40.0]))
    second = first.with_name("vqav2_fewshot-4shot-copy.json")
    shutil.copy(first, second)
    with pytest.raises(DataError, match=r"a second 'flamingo' result for vqav2_fewshot \(random, 4 shots\)") as err:
        render(tmp_path / "c")
    assert str(first) in str(err.value) and str(second) in str(err.value)  # both files named


def test_a_reported_incontext_block_with_an_unknown_task_names_the_file_and_key(tmp_path):
    shutil.copytree(REPORTED, tmp_path / "rep")
    path = tmp_path / "rep" / "openflamingo-4b.json"
    path.write_text(path.read_text().replace('"hateful_memes_fewshot": {', '"hateful_memes_fewshto": {'))
    _write(tmp_path / "res", _icl("flamingo", "vqav2_fewshot", 4, [40.0]))
    with pytest.raises(
        DataError, match=r"openflamingo-4b\.json: key 'incontext\.hateful_memes_fewshto': task is not in"
    ):
        render(tmp_path / "res", tmp_path / "rep")
    data = json.loads((REPORTED / "openflamingo-4b.json").read_text())
    data["incontext"]["vqav2_fewshot"]["random"]["std"]["64"] = 0.1
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"key 'incontext\.vqav2_fewshot\.random\.std': expected \{shots: number\}"):
        render(tmp_path / "res", tmp_path / "rep")
