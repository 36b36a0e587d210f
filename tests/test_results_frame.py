"""Results as a DataFrame (`mmbench.results.load`), the seed spread in the leaderboard and the cost table: each
checked against the result JSON files read here independently (plain `json`, no mmbench reader)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from mmbench.cli import main
from mmbench.errors import DataError
from mmbench.results import frame as frames
from mmbench.results import load
from mmbench.results.layout import LAYOUT_FILE, load_layout
from mmbench.results.table import domain_averages, render

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "results" / "synthetic"
REPORTED = REPO / "results" / "reported"
LAYOUT = load_layout(REPORTED / LAYOUT_FILE)


def _files(root: Path) -> list[Path]:
    return sorted((root / "runs").glob("*/*.json"))


def test_the_frame_holds_every_score_of_every_result_file():
    frame = load(SYNTHETIC)
    expected = []
    for path in _files(SYNTHETIC):
        d = json.loads(path.read_text())
        scores = d["scores"] if d["status"] == "ok" else {}
        for key, value in scores.items() or [(None, math.nan)]:
            expected.append((path, d, key, value))
    assert len(frame) == len(expected)
    assert list(frame.file) == [str(p) for p, *_ in expected]  # file order, a row per score
    for (path, d, key, value), row in zip(expected, frame.itertuples(index=False)):
        prov = d["provenance"]
        assert (row.model, row.task, row.domain, row.protocol, row.status) == (
            d["model"], d["task"], d["domain"], d["protocol"], d["status"]
        )  # fmt: skip
        assert (
            row.result == path.stem
            and (row.reason if isinstance(row.reason, str) else None) == d["reason"]
            and row.n == d["n_samples"]
        )
        assert (row.data_source, row.random_init, row.config_hash) == (
            d["data_source"],
            d["random_init"],
            d["config_hash"],
        )
        assert (row.wall_seconds, row.device, row.precision) == (
            prov["wall_seconds"],
            prov["device"],
            prov["precision"],
        )
        assert row.peak_rss_mb == prov["peak_rss_mb"] and math.isnan(row.peak_gpu_mb)  # CPU runs: no device memory
        seed = None if prov["seed"] is None else row.seed  # a several-seed result records its seeds instead
        assert seed == prov["seed"] and row.mmbench == prov["mmbench"] and row.n_devices == 1
        if key is None:
            assert row.status == "n/a" and math.isnan(row.value) and not isinstance(row.score, str)  # NaN
        else:
            assert row.score == key and row.value == value
        trials = d["details"].get("trials") if d["protocol"] == "incontext" else None
        if trials and len(trials) > 1:  # in-context trials are seeds too
            assert row.n_seeds == len(trials) and row.std == d["details"]["std"][key]
        elif d.get("seed_runs"):  # --seeds (schema 3)
            assert row.n_seeds == len(d["seed_runs"]) and row.std == d["scores_std"][key]
            assert row.seeds == ",".join(str(r["seed"]) for r in d["seed_runs"])
        else:
            assert row.n_seeds == 1 and math.isnan(row.std)
        assert not row.reference  # synthetic data, random weights


def test_load_takes_a_runs_folder_or_one_file_and_names_a_missing_path(tmp_path):
    one = SYNTHETIC / "runs" / "clip-tiny" / "mrpc.json"
    frame = load(one)
    assert list(frame.score) == list(json.loads(one.read_text())["scores"])  # acc_f1_mean and its parts
    assert len(load(SYNTHETIC / "runs")) == len(load(SYNTHETIC))
    with pytest.raises(DataError, match="nowhere: no such results folder or result file"):
        load(tmp_path / "nowhere")


def test_import_mmbench_is_cheap_and_mmbench_results_load_works_without_an_import():
    code = (
        "import sys, mmbench; assert 'pandas' not in sys.modules and 'matplotlib' not in sys.modules; "
        f"f = mmbench.results.load({str(SYNTHETIC)!r}); print(type(f).__name__, len(f))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["DataFrame", str(len(load(SYNTHETIC)))]


def test_the_frames_averages_are_the_leaderboards():
    """The paper's rule computed twice: with pandas on the frame, and by the leaderboard from the result files."""
    frame = load(SYNTHETIC)
    ours = frames.domain_averages(frame, LAYOUT)
    assert len(ours) == 5  # the five tiny presets
    for column, averages in ours.iterrows():
        model = column.split(" ")[0]
        scores = {}
        for path in sorted((SYNTHETIC / "runs" / model).glob("*.json")):
            d = json.loads(path.read_text())
            if d["protocol"] not in ("zeroshot", "incontext") and path.stem == d["task"]:
                scores[d["task"]] = d["scores"] if d["status"] == "ok" else "n/a"
        theirs = domain_averages(scores, LAYOUT)
        for key, value in theirs.items():
            assert averages[key] == pytest.approx(value, abs=1e-9), (column, key)


# --- several seeds: mean ± std -------------------------------------------------------------------------------------


def _seeded(tmp_path: Path, per_seed: list[float]) -> Path:
    """A copy of clip-tiny's synthetic results whose RTE is a 3-seed result, written by hand as the schema says."""
    results = tmp_path / "results"
    shutil.copytree(SYNTHETIC / "runs" / "clip-tiny", results / "runs" / "clip-tiny")
    path = results / "runs" / "clip-tiny" / "rte.json"
    d = json.loads(path.read_text())
    d["schema_version"] = 3
    d["seed_runs"] = [
        {"seed": s, "scores": {"accuracy": v}, "metrics": {"accuracy": v / 100}, "n_samples": d["n_samples"]}
        for s, v in enumerate(per_seed)
    ]
    d["scores"] = {"accuracy": statistics.mean(per_seed)}
    d["metrics"] = {"accuracy": statistics.mean(per_seed) / 100}
    d["scores_std"] = {"accuracy": statistics.stdev(per_seed)}
    path.write_text(json.dumps(d))
    return results


def test_a_result_over_seeds_prints_mean_and_std_and_the_averages_use_the_mean(tmp_path):
    per_seed = [60.0, 61.5, 62.4]  # mean 61.3, sample std 1.2124...
    results = _seeded(tmp_path, per_seed)
    board = render(results, REPORTED)
    other = board.markdown.split("## Not comparable to the paper")[1].split("\n## ")[0]  # synthetic: the 2nd table
    row = next(ln for ln in other.splitlines() if ln.startswith("| RTE |"))
    assert row == "| RTE | accuracy | 61.30 ± 1.21 |"
    assert "`mean ± std`: a result over several seeds" in board.markdown  # said once, only when there are seeds
    cell = next(
        r for r in csv.DictReader(io.StringIO(board.csv)) if r["row"] == "RTE" and r["column"].startswith("clip-tiny")
    )
    assert cell["value"] == "61.30" and cell["note"] == "mean of 3 seeds, sample std 1.21"  # the CSV stays numeric
    nlp = {}
    for path in sorted((results / "runs" / "clip-tiny").glob("*.json")):
        d = json.loads(path.read_text())
        if d["domain"] == "language":
            nlp[d["task"]] = d["scores"][next(r.score for r in LAYOUT.rows if r.task == d["task"])]
    nlp_row = next(ln for ln in other.splitlines() if ln.startswith("| NLP Avg |"))
    assert nlp_row == f"| NLP Avg | mean of 8 | {sum(nlp.values()) / 8:.2f} |"
    frame = load(results)
    rte = frame[frame.task == "rte"].iloc[0]
    assert (rte.value, rte.n_seeds, rte.seeds) == (statistics.mean(per_seed), 3, "0,1,2")
    assert rte["std"] == pytest.approx(statistics.stdev(per_seed))  # rte.std is Series.std


def test_results_without_seeds_render_as_before(tmp_path):
    """The seed line and ± appear only with seeds: the committed leaderboard's tables are byte-identical (its
    whole-file check is tests/test_table.py::test_committed_leaderboard_is_a_fresh_render)."""
    single = tmp_path / "synthetic"
    for path in (SYNTHETIC / "runs").glob("*/*.json"):  # the committed results, less the several-seed ones
        if not json.loads(path.read_text()).get("seed_runs"):
            (single / "runs" / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, single / "runs" / path.parent.name / path.name)
    board = render(single, REPORTED)
    assert "±" not in board.markdown.split("## In-context")[0] and "seeds" not in board.csv
    seeded = render(SYNTHETIC, REPORTED)
    assert "±" in seeded.markdown and "mean of 3 seeds" in seeded.csv


# --- the cost table -------------------------------------------------------------------------------------------------


def _cost_rows(text: str) -> dict[str, list[str]]:
    table = text.split("## By protocol")[0]
    rows = [ln.strip("|").split(" | ") for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[1:]}


def test_cost_table_numbers_are_recomputed_from_the_provenance(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(SYNTHETIC / "runs" / "flava-tiny", results / "runs" / "flava-tiny")
    # one result as if it had run on 8 GPUs, so device-hours weigh devices
    gpu = results / "runs" / "flava-tiny" / "cifar10.json"
    d = json.loads(gpu.read_text())
    d["provenance"].update(device="NVIDIA H200 x8", peak_gpu_mb=5120.5)
    gpu.write_text(json.dumps(d))
    assert main(["table", "--results", str(results), "--no-plots"]) == 0
    text = (results / "LEADERBOARD-cost.md").read_text()
    docs = [json.loads(p.read_text()) for p in sorted((results / "runs" / "flava-tiny").glob("*.json"))]
    wall = math.fsum(x["provenance"]["wall_seconds"] for x in docs)
    devices = [8 if x["provenance"]["device"].endswith("x8") else 1 for x in docs]
    hours = math.fsum(x["provenance"]["wall_seconds"] * n for x, n in zip(docs, devices)) / 3600
    extract = [
        x
        for x in docs
        if x["protocol"] in ("linear_probe", "retrieval", "zeroshot")
        and x["status"] == "ok"
        and "hit" not in {**x["details"].get("feature_cache", {}), **x["details"].get("cache", {})}.values()
    ]
    rate = sum(x["n_samples"] for x in extract) / math.fsum(x["provenance"]["wall_seconds"] for x in extract)
    row = _cost_rows(text)["flava-tiny (synthetic, random init)"]
    assert int(row[0]) == len(docs)
    assert float(row[1].split(" s ")[0]) == pytest.approx(wall, abs=0.05)
    assert float(row[2]) == pytest.approx(hours, abs=5e-5) and hours > wall / 3600  # the 8-GPU result counts 8x
    assert row[3] == "NVIDIA H200 x8, cpu x1"
    assert float(row[4]) == pytest.approx(max(x["provenance"]["peak_rss_mb"] for x in docs), abs=0.5)
    assert row[5] == "5121"  # the only device memory recorded, rounded half-up
    assert float(row[6]) == pytest.approx(rate, abs=0.05)
    assert main(["table", "--results", str(results), "--no-plots", "--check"]) == 0
    (results / "LEADERBOARD-cost.md").write_text(text.replace(row[0], "999", 1))
    assert main(["table", "--results", str(results), "--no-plots", "--check"]) == 1


def test_device_counts_come_from_the_provenance_device_string():
    devices = ("cpu x2", "NVIDIA H200 x8", "cpu x1, 2 nodes", "NVIDIA H200 x8, 4 nodes", "cpu", None)
    assert [frames.n_devices(d) for d in devices] == [2, 8, 2, 32, 1, None]
