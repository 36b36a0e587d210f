"""`mmbench compare A B`: per (model, task, score) differences between hand-made results folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmbench.cli import main
from mmbench.errors import ConfigError, DataError
from mmbench.results import store
from mmbench.results.compare import Comparison, ScoreDiff, compare
from mmbench.results.schema import TaskResult


def _result(model: str, task: str, scores: dict[str, float] | None, config_hash: str = "sha256:0") -> TaskResult:
    """An `ok` result with `scores` (None: `n/a`)."""
    return TaskResult(
        model=model,
        task=task,
        domain="multimodal",
        protocol="retrieval",
        status="ok" if scores is not None else "n/a",
        metrics={k: v / 100 for k, v in (scores or {}).items()},
        scores=dict(scores or {}),
        primary=next(iter(scores), "accuracy") if scores else "accuracy",
        n_samples=100,
        data_source="synthetic",
        limit=None,
        config={},
        config_hash=config_hash,
        provenance={"wall_seconds": 1.0},
        reason=None if scores is not None else f"{model} cannot do {task}",
        random_init=True,
    )


def _folder(path: Path, *results: TaskResult) -> Path:
    for r in results:
        store.write(path, r)
    return path


def _cells(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


FLICKR = {"tr_r1": 2.0, "tr_r5": 6.0, "ir_r1": 1.2, "ir_r5": 5.8}


@pytest.fixture
def committed(tmp_path) -> Path:
    return _folder(
        tmp_path / "committed",
        _result("clip-tiny", "flickr30k", FLICKR),
        _result("clip-tiny", "cifar10", {"top1": 64.0}),
        _result("flamingo-tiny", "flickr30k", None),
    )


def test_identical_folders_compare_equal_row_by_row(committed, tmp_path, capsys):
    rerun = _folder(
        tmp_path / "rerun",
        _result("clip-tiny", "flickr30k", dict(FLICKR)),
        _result("clip-tiny", "cifar10", {"top1": 64.0}),
        _result("flamingo-tiny", "flickr30k", None),
    )
    got = compare(rerun, committed)
    assert isinstance(got, Comparison) and got.ok and got.max_abs_diff == 0.0
    assert [(r.model, r.task, r.score, r.status) for r in got.rows] == [
        ("clip-tiny", "cifar10", "top1", "same"),
        *[("clip-tiny", "flickr30k", k, "same") for k in sorted(FLICKR)],
        ("flamingo-tiny", "flickr30k", "", "n/a"),
    ]
    assert main(["compare", str(rerun), str(committed)]) == 0
    out = capsys.readouterr().out
    assert ["clip-tiny", "flickr30k", "ir_r5", "5.8000", "5.8000", "+0.0000", "same"] in _cells(out)
    assert out.rstrip().endswith("5 scores compared, max |A - B| = 0.0000 (tolerance 0); all pass")


def test_a_difference_passes_up_to_the_tolerance_and_fails_beyond_it(committed, tmp_path, capsys):
    rerun = _folder(
        tmp_path / "rerun",
        _result("clip-tiny", "flickr30k", {**FLICKR, "ir_r1": 1.4}),  # one caption of 500 moved: +0.2
        _result("clip-tiny", "cifar10", {"top1": 65.0}),  # one image of 100: +1.0
        _result("flamingo-tiny", "flickr30k", None),
    )
    exact = compare(rerun, committed, tol=1.0)  # a difference of exactly tol passes despite binary rounding
    assert exact.ok and exact.max_abs_diff == pytest.approx(1.0)
    rows = {(r.task, r.score): r for r in exact.rows}
    assert rows["flickr30k", "ir_r1"].status == "within" and rows["flickr30k", "ir_r1"].diff == pytest.approx(0.2)
    assert rows["cifar10", "top1"] == ScoreDiff("clip-tiny", "cifar10", "top1", 65.0, 64.0, "within")
    tight = compare(rerun, committed, tol=0.5)
    assert [(r.task, r.score, r.status) for r in tight.failures] == [("cifar10", "top1", "beyond")]
    assert main(["compare", str(rerun), str(committed), "--tol", "0.5"]) == 1
    captured = capsys.readouterr()
    assert ["clip-tiny", "cifar10", "top1", "65.0000", "64.0000", "+1.0000", "beyond"] in _cells(captured.out)
    assert "max |A - B| = 1.0000 (tolerance 0.5); 1 failing" in captured.out
    assert "mmbench: compare: 1 failing: clip-tiny/cifar10/top1 (beyond)" in captured.err


def test_missing_results_fail_unless_a_is_declared_a_subset_of_b(committed, tmp_path, capsys):
    slice_ = _folder(tmp_path / "slice", _result("clip-tiny", "cifar10", {"top1": 64.0}))
    strict = compare(slice_, committed)
    assert {(r.model, r.task, r.status) for r in strict.failures} == {
        ("clip-tiny", "flickr30k", "only in B"),
        ("flamingo-tiny", "flickr30k", "only in B"),
    }
    assert main(["compare", str(slice_), str(committed)]) == 1
    assert "only in B" in capsys.readouterr().out
    subset = compare(slice_, committed, subset=True)
    assert subset.ok and sum(r.status == "not in A" for r in subset.rows) == 2
    assert main(["compare", str(slice_), str(committed), "--subset"]) == 0
    out = capsys.readouterr().out
    assert [row[:2] for row in _cells(out)[2:-1]] == [["clip-tiny", "cifar10"]]  # B's other results: counted
    assert "1 scores compared, max |A - B| = 0.0000 (tolerance 0); 2 results of B not in A (subset); all pass" in out
    # a result only in A is never covered by --subset: the slice ran something the reference lacks
    _folder(slice_, _result("beit3-tiny", "cifar10", {"top1": 71.0}))
    extra = compare(slice_, committed, subset=True)
    assert [(r.model, r.status) for r in extra.failures] == [("beit3-tiny", "only in A")]


def test_status_config_and_score_key_mismatches_fail_whatever_the_tolerance(committed, tmp_path):
    rerun = _folder(
        tmp_path / "rerun",
        _result("clip-tiny", "flickr30k", {k: v for k, v in FLICKR.items() if k != "tr_r5"}),
        _result("clip-tiny", "cifar10", {"top1": 64.0}, config_hash="sha256:1"),
        _result("flamingo-tiny", "flickr30k", {"tr_r1": 0.0}),
    )
    got = compare(rerun, committed, tol=100.0)
    assert [(r.model, r.task, r.score, r.status) for r in got.failures] == [
        ("clip-tiny", "cifar10", "", "config differs"),
        ("clip-tiny", "flickr30k", "tr_r5", "missing in A"),
        ("flamingo-tiny", "flickr30k", "", "status differs"),
    ]
    assert got.failures[0].detail == "sha256:1 vs sha256:0: made with different settings"
    assert got.failures[2].detail == "ok vs n/a"


def test_bad_arguments_are_one_line_errors_naming_what_is_wrong(committed, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"--tol -1: expected a non-negative number of score points"):
        compare(committed, committed, tol=-1)
    with pytest.raises(DataError, match=rf"{tmp_path / 'nope'}: no such results folder"):
        compare(tmp_path / "nope", committed)
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    assert main(["compare", str(tmp_path / "empty"), str(committed)]) == 3  # a data problem: exit 3, as every DataError
    assert f"{tmp_path / 'empty'}: no results in it" in capsys.readouterr().err
