"""Sweeps: the run plan (dry run, JSON, --changed-since), per-task resources, and the launchers: submitit's
LocalExecutor (a subprocess per job) gives the results an in-process `mmbench run` gives; SLURM submission is
checked through stand-in `sbatch`/`srun` programs; the regeneration workflow's commands parse."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mmbench.cli import _parser, main
from mmbench.config import config_hash, parse_overrides
from mmbench.data import synthetic
from mmbench.errors import ConfigError
from mmbench.launch import CodeChanges, counts_for, plan, run_in_process
from mmbench.launch.executors import LaunchOptions, job_kwargs, launch, slurm_parameters
from mmbench.launch.plan import evaluate_defaults
from mmbench.results.store import read, result_path

REPO = Path(__file__).resolve().parents[1]
TASKS = ["--task", "flickr30k", "--task", "cifar10"]  # one retrieval, one linear probe


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, registry):
    root = tmp_path_factory.mktemp("data")
    synthetic.write(registry.task("flickr30k"), root / "flickr30k", n=20, seed=1)
    small = {"data": {"synthetic": {"n_train": 60, "samples_per_shard": 32}}}
    synthetic.write(registry.task("cifar10", small), root / "cifar10", n=30, seed=2)
    return root


def _args(data_root: Path, output: Path, *more: str) -> list[str]:
    common = ["--model", "clip-tiny", "--data-root", str(data_root), "--output", str(output), "--accelerator", "cpu"]
    return ["run", *common, "--num-workers", "0", "--no-progress", *more]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, data_root):
    """The reference: both tasks run by a plain in-process `mmbench run`."""
    out = tmp_path_factory.mktemp("in-process")
    assert main(_args(data_root, out, *TASKS, "--cache-dir", str(out / "cache"))) == 0
    return out


def test_resources_come_from_the_task_yaml_and_set_and_stay_out_of_the_hash(registry):
    vqa, rte, flickr = registry.task("vqav2"), registry.task("rte"), registry.task("flickr30k")
    assert (vqa.resources.gpus, vqa.resources.time_minutes) == (8, 1440)  # its own line
    assert rte.resources.time_minutes == 60 and registry.task("mnli").resources.time_minutes == 600  # base, own
    assert flickr.resources.time_minutes == 30 and flickr.resources.gpus == 1
    # A zero-shot task includes its linear-probe task and then the zero-shot base, whose resources win.
    assert (
        registry.task("imagenet").resources.mem_gb == 128 and registry.task("imagenet_zeroshot").resources.mem_gb == 32
    )
    longer = registry.task("vqav2", parse_overrides(["task.resources.time_minutes=2880"])["task"])
    assert longer.resources.time_minutes == 2880
    model, run = registry.model("clip-tiny"), {"seed": 0, "limit": None, "data_source": "real", "precision": None}
    assert config_hash(model, longer, run) == config_hash(model, vqa, run)
    with pytest.raises(ConfigError, match=r"key 'resources.gpus': -1 is out of range"):
        registry.task("vqav2", parse_overrides(["task.resources.gpus=-1"])["task"])


@pytest.mark.parametrize("name", ["clip-tiny/flickr30k", "flava-tiny/vqav2", "beit3-tiny/cifar10", "clip-tiny/rte"])
def test_committed_results_keep_their_config_hash(registry, name):
    """Adding `resources` to every task must not make a committed result stale."""
    res = read(REPO / "results" / "synthetic" / "runs" / f"{name}.json")
    fresh = config_hash(registry.model(res.model), registry.task(res.task), res.config["run"])
    assert fresh == res.config_hash


@pytest.mark.multiprocess
def test_local_launcher_gives_the_in_process_results_skips_what_stands_and_reports_a_failure(
    tmp_path, data_root, in_process, capsys
):
    out = tmp_path / "launched"
    launched = _args(data_root, out, *TASKS, "--cache-dir", str(tmp_path / "cache"))
    assert main([*launched, "--dry-run"]) == 0
    before = capsys.readouterr().out
    assert re.search(r"clip-tiny +flickr30k +sha256:\w+ +to run \(new\) +1 gpu, 16 cpu, 32 GB, 0:30 h", before)
    assert re.search(r"clip-tiny +cifar10 +sha256:\w+ +to run \(new\)", before)

    # COCO has no data here: its job fails with evaluate's own line, the others' results are written.
    rc = main([*launched, "--task", "coco", "--launcher", "local", "--array-parallelism", "3"])
    text = capsys.readouterr().out
    assert rc == 3, text  # the failed job's exit status: a data error
    assert f"failed     clip-tiny x coco: task 'coco': dataset not found at {data_root / 'coco'}" in text
    assert re.search(r"done       clip-tiny x flickr30k  tr_r1=", text) and "done       clip-tiny x cifar10" in text
    assert "3 jobs: 2 done, 1 failed; logs in" in text
    for task in ("flickr30k", "cifar10"):
        ref, got = (read(result_path(d, "clip-tiny", task)) for d in (in_process, out))
        assert (got.scores, got.metrics, got.config_hash) == (ref.scores, ref.metrics, ref.config_hash)
        assert got.data_fingerprint == ref.data_fingerprint and got.n_samples == ref.n_samples

    # Everything that stands is skipped before submission: no job is started.
    jobs_before = set((out / "launch").glob("*/*_submitted.pkl"))
    assert main([*launched, "--launcher", "local"]) == 0
    assert "2 jobs: 2 skipped (up to date)" in capsys.readouterr().out
    assert set((out / "launch").glob("*/*_submitted.pkl")) == jobs_before
    assert main([*launched, "--task", "coco", "--dry-run", "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["summary"] == {"jobs": 3, "to_run": 1, "up_to_date": 2}
    statuses = {j["task"]: (j["status"], j["reason"]) for j in after["jobs"]}
    assert statuses == {"flickr30k": ("up to date",) * 2, "cifar10": ("up to date",) * 2, "coco": ("to run", "new")}
    assert after["jobs"][0]["config_hash"] == read(result_path(out, "clip-tiny", "flickr30k")).config_hash


def test_dry_run_says_why_a_job_runs_and_builds_nothing(tmp_path, data_root, in_process, capsys):
    base = _args(data_root, in_process, *TASKS, "--cache-dir", str(in_process / "cache"), "--dry-run")
    assert main(base) == 0
    assert "2 jobs: 0 to run, 2 up to date" in capsys.readouterr().out
    assert main([*base, "--seed", "1"]) == 0  # the seed is part of the config hash
    assert capsys.readouterr().out.count("to run (config changed)") == 2
    assert main([*base, "--redo"]) == 0
    assert capsys.readouterr().out.count("to run (redo)") == 2
    # Synthetic data a dry run would need are not generated by it.
    cache = tmp_path / "cache"
    assert (
        main(
            ["run", "--model", "clip-tiny", "--task", "coco", "--data", "synthetic", "--output", str(tmp_path)]
            + ["--cache-dir", str(cache), "--dry-run"]
        )
        == 0
    )
    assert "to run (new)" in capsys.readouterr().out and not cache.exists()
    assert main([*base[:-1], "--json"]) == 2  # --json without --dry-run
    assert "--json goes with --dry-run" in capsys.readouterr().err


def test_the_plan_sees_changed_data_and_damaged_results_as_evaluate_does(tmp_path, data_root, in_process):
    """Copies keep names, sizes and modification times, so the stored results stand on them; then one shard is
    touched and one result damaged."""
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(data_root, data)
    shutil.copytree(in_process / "runs", out / "runs")
    opts = dict(data_root=data, output=out, cache_dir=in_process / "cache")

    def reasons() -> dict[str, str]:
        return {j.task: j.reason for j in plan("clip-tiny", ["flickr30k", "cifar10"], **opts)}

    assert reasons() == {"flickr30k": "up to date", "cifar10": "up to date"}
    shard = next((data / "cifar10").rglob("*.tar"))
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    result_path(out, "clip-tiny", "flickr30k").write_text("{")
    assert reasons() == {"flickr30k": "unreadable result", "cifar10": "data changed"}


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def code_repo(tmp_path):
    """A git repository shaped like mmbench's code: a commit, then one that changes the retrieval protocol and the
    CLI (which moves no number)."""
    code = tmp_path / "repo" / "src" / "mmbench"
    for f in ("protocols/retrieval.py", "protocols/linear_probe.py", "protocols/base.py", "cli.py"):
        (code / f).parent.mkdir(parents=True, exist_ok=True)
        (code / f).write_text("# v1\n")
    _git(code, "init", "-q")
    _git(code, "add", ".")
    _git(code, "commit", "-qm", "v1")
    _git(code, "tag", "v1")
    for f in ("protocols/retrieval.py", "cli.py"):
        (code / f).write_text("# v2\n")
    _git(code, "commit", "-qam", "v2")
    return code


def test_changed_since_reruns_results_older_than_code_that_counts_for_them(code_repo, data_root, in_process):
    v1, v2 = _git(code_repo, "rev-parse", "v1"), _git(code_repo, "rev-parse", "HEAD")
    changes = CodeChanges("v1", code_repo)
    assert changes.since_ref == ["cli.py", "protocols/retrieval.py"]
    assert changes.for_result("retrieval", v1) == ["protocols/retrieval.py"]
    assert changes.for_result("linear_probe", v1) == []
    assert changes.for_result("retrieval", v2) == []  # made by the new code already
    assert changes.for_result("retrieval", v2 + "+dirty") == ["protocols/retrieval.py"]  # unknown changes: all
    assert counts_for("protocols/base.py", "linear_probe") and not counts_for("launch/plan.py", "retrieval")

    # The stored results were made by this checkout's commit, unknown to that repository: every change counts.
    opts = dict(data_root=data_root, output=in_process, cache_dir=in_process / "cache", accelerator="cpu")
    jobs = plan("clip-tiny", ["flickr30k", "cifar10"], changed_since="v1", code_dir=code_repo, **opts)
    flickr, cifar = jobs
    assert (flickr.status, flickr.reason, flickr.changed_files) == (
        "to run",
        "code changed",
        ["protocols/retrieval.py"],
    )
    assert flickr.evaluate_kwargs["redo"] and (cifar.status, cifar.reason) == ("up to date", "up to date")
    stamps = {j.task: j.result_path.stat().st_mtime_ns for j in jobs}
    before = read(flickr.result_path)
    [again] = run_in_process(jobs)
    assert again.task == "flickr30k" and again.scores == before.scores
    assert flickr.result_path.stat().st_mtime_ns != stamps["flickr30k"]
    assert cifar.result_path.stat().st_mtime_ns == stamps["cifar10"]
    with pytest.raises(ConfigError, match=r"^--changed-since no-such-ref: .*a git ref of the mmbench checkout"):
        CodeChanges("no-such-ref", code_repo)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`srun` and `sbatch` stand-ins on PATH: sbatch keeps each script and the PYTHONPATH it was submitted with."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\nn=$(ls {record} | grep -c sh$)\ncp "$1" {record}/$n.sh\n'
        f'echo "$PYTHONPATH" > {record}/$n.env\necho "Submitted batch job $((100 + n))"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_slurm_launcher_submits_arrays_with_the_tasks_resources(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    jobs = plan("clip-tiny", ["vqav2", "flickr30k", "coco"], output=tmp_path / "out", data_root=tmp_path, fresh=True)
    folder = tmp_path / "launch"
    opts = LaunchOptions(wait=False, parallelism=2, partition="gpu", account="vl")
    outcomes = launch(jobs, "slurm", folder, opts)
    assert [(o.state, o.job_id) for o in outcomes] == [
        ("submitted", "100"),
        ("submitted", "101_0"),
        ("submitted", "101_1"),
    ]
    vqa, retrieval = (fake_slurm / "0.sh").read_text(), (fake_slurm / "1.sh").read_text()
    for flag in ("gpus-per-node=8", "ntasks-per-node=8", "cpus-per-task=8", "mem=256GB", "time=1440", "nodes=1"):
        assert f"#SBATCH --{flag}\n" in vqa  # Lightning under SLURM: one task per device
    for flag in ("partition=gpu", "account=vl", "signal=USR2@120"):
        assert f"#SBATCH --{flag}\n" in vqa and f"#SBATCH --{flag}\n" in retrieval
    assert "#SBATCH --array=0-1%2\n" in retrieval and "#SBATCH --time=30\n" in retrieval  # flickr30k and coco
    # The jobs import this mmbench, whatever PYTHONPATH the launcher had (restored after submission).
    assert (fake_slurm / "0.env").read_text().strip() == f"{REPO / 'src'}{os.pathsep}/elsewhere"
    assert os.environ["PYTHONPATH"] == "/elsewhere"

    # What a job runs: this (model, task)'s evaluate call, on 8 devices; a requeued attempt resumes, never afresh.
    with open(folder / "100_submitted.pkl", "rb") as f:
        job = pickle.load(f).function
    assert job.kwargs["model"] == "clip-tiny" and job.kwargs["tasks"] == ["vqav2"] and job.kwargs["devices"] == 8
    assert job.kwargs["fresh"] and not job.checkpoint().function.kwargs["fresh"]


def _workflow_plan_args(script: str, tmp_path: Path) -> str:
    """The plan step's arguments as its shell builds them (its lines up to the one that outputs them), in this
    repository, with the workflow's default inputs."""
    end = script.index("\n", script.index('>> "$GITHUB_OUTPUT"'))
    head = script[:end].replace("${{ github.event.inputs.changed_since }}", "")
    env = {**os.environ, "MODEL_PRESETS": "flava clip", "TASK_GROUPS": "flava35 zeroshot"}
    env["GITHUB_OUTPUT"] = str(tmp_path / "output")
    subprocess.run(["bash", "-euo", "pipefail", "-c", head], cwd=REPO, env=env, check=True, capture_output=True)
    outputs = dict(line.split("=", 1) for line in (tmp_path / "output").read_text().splitlines())
    return outputs["args"]


def test_regenerate_workflow_parses_and_calls_commands_that_exist(tmp_path):
    flow = yaml.safe_load((REPO / ".github" / "workflows" / "regenerate.yml").read_text())
    assert set(flow[True]) == {"workflow_dispatch", "schedule"}  # YAML reads the key `on` as True
    job = flow["jobs"]["regenerate"]
    assert job["runs-on"] == ["self-hosted", "gpu"] and {"MMBENCH_DATA", "HF_HOME"} <= set(flow["env"])
    runs = "\n".join(s.get("run", "") for s in job["steps"]).replace("\\\n", " ")
    args = _workflow_plan_args(next(s["run"] for s in job["steps"] if s.get("id") == "plan"), tmp_path)
    parsed = _parser().parse_args(["run", *shlex.split(args)])
    assert parsed.model == ["flava", "clip"] and parsed.group == ["flava35", "zeroshot"]
    assert re.fullmatch(r"[0-9a-f]{40}", parsed.changed_since) and parsed.no_progress
    commands = [c.split(" | ")[0].split(" > ")[0] for c in re.findall(r"\.venv/bin/mmbench ([^\n]+)", runs)]
    assert len(commands) == 4
    for command in commands:
        line = command.replace("${{ steps.plan.outputs.args }}", args).replace("$ARGS", args)
        parsed = _parser().parse_args(shlex.split(line.replace('"$LAUNCHER"', "slurm")))
        assert parsed.command in ("run", "table")
    assert any(s.get("uses", "").startswith("peter-evans/create-pull-request") for s in job["steps"])
    assert job["steps"][0]["with"]["fetch-depth"] == 0  # --changed-since needs the history


def test_a_multi_node_task_asks_for_its_nodes(tmp_path):
    [job] = plan("clip-tiny", "vqav2", output=tmp_path, data_root=tmp_path, overrides=["task.resources.nodes=2"])
    params = slurm_parameters(job, None, None)
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 8, 8)
    if "num_nodes" in evaluate_defaults():  # evaluate runs a task across nodes (Lightning's num_nodes)
        assert job_kwargs(job, "slurm")["num_nodes"] == 2
    else:
        with pytest.raises(ConfigError, match=r"^task 'vqav2': resources.nodes 2, but this mmbench runs a task on one"):
            job_kwargs(job, "slurm")
