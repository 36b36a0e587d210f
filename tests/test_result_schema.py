"""The result schema's seed fields: written by this version, validated on read, absent from older versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmbench.errors import DataError
from mmbench.results import store
from mmbench.results.schema import SCHEMA_VERSION, TaskResult

COMMITTED = Path(__file__).resolve().parents[1] / "results" / "synthetic" / "runs"


def _committed() -> dict:
    return json.loads(sorted(COMMITTED.glob("clip-tiny/*.json"))[0].read_text())


def test_a_result_read_from_an_older_version_is_written_back_readable(tmp_path: Path) -> None:
    old = _committed()
    assert old["schema_version"] < SCHEMA_VERSION
    res = TaskResult.from_json(old)
    path = store.write(tmp_path, res)
    again = json.loads(path.read_text())
    assert again["schema_version"] == SCHEMA_VERSION and again["seed_runs"] == [] and again["scores_std"] == {}
    assert store.read(path).scores == res.scores


def test_seed_runs_round_trip_and_are_validated(tmp_path: Path) -> None:
    d = TaskResult.from_json(_committed()).to_json()
    score = next(iter(d["scores"]))
    d["seed_runs"] = [
        {"seed": s, "scores": {score: v}, "metrics": {}, "n_samples": 3} for s, v in ((0, 50.0), (1, 52.0))
    ]
    d["scores_std"] = {score: 1.4142}
    res = TaskResult.from_json(d)
    assert store.read(store.write(tmp_path, res)).seed_runs == d["seed_runs"]
    bad_run = {**d, "seed_runs": [{"seed": 0, "scores": {}}]}
    with pytest.raises(DataError, match="key 'seed_runs'"):
        TaskResult.from_json(bad_run)
    with pytest.raises(DataError, match="key 'scores_std.other'"):
        TaskResult.from_json({**d, "scores_std": {"other": 1.0}})
    with pytest.raises(DataError, match="key 'scores_std'"):
        TaskResult.from_json({**d, "scores_std": {score: -1.0}})


def test_an_older_version_cannot_hold_the_seed_fields() -> None:
    old = {**_committed(), "seed_runs": []}
    with pytest.raises(DataError, match="unknown key 'seed_runs'"):
        TaskResult.from_json(old)
