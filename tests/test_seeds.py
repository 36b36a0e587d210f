"""Several seeds, one result (`--seeds`): each seed is exactly its single-seed run, the result holds their mean,
sample standard deviation and per-seed scores, a repeated run is up to date, a run killed between seeds resumes
with the seeds it finished, and a single seed keeps the config hash of the committed results."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch

from mmbench import evaluate
from mmbench import seeds as seeding
from mmbench.cli import main
from mmbench.config import config_hash
from mmbench.data import synthetic
from mmbench.errors import ConfigError
from mmbench.lit.trainer import TrainerOptions
from mmbench.models import build_model
from mmbench.protocols import RunContext, linear_probe
from mmbench.results.store import read, result_path

ROOT = Path(__file__).resolve().parents[1]
# A few updates on 48 samples: seconds per seed, and a schedule no other test uses (run folders are keyed by it).
SHORT = [
    "task.data.synthetic.finetune.max_steps=6",
    "task.data.synthetic.finetune.val_every_steps=3",
    "task.data.synthetic.finetune.warmup_steps=2",
]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rte(output: Path, *overrides: str, **kwargs):
    kwargs = {"data": "synthetic", "progress": False, "num_workers": 0, "limit": 48, **kwargs}
    return evaluate("clip-tiny", "rte", output=output, overrides=[*SHORT, *overrides], **kwargs)[0]


def test_three_seeds_are_three_single_runs_in_one_result(tmp_path):
    singles = [_rte(tmp_path / f"seed{s}", seed=s) for s in (0, 1, 2)]
    for s, r in zip((0, 1, 2), singles):
        assert r.config["run"] == {"seed": s, "limit": 48, "data_source": "synthetic", "precision": None}
        assert r.seed_runs == [] and r.scores_std == {}
    # fresh: train every seed again instead of evaluating the single runs' finished run folders
    multi = _rte(tmp_path / "multi", seeds=[0, 1, 2], fresh=True)
    stored = read(result_path(tmp_path / "multi", "clip-tiny", "rte"))
    for res in (multi, stored):
        per_seed = [r.scores["accuracy"] for r in singles]
        assert res.scores == {"accuracy": round(statistics.fmean(per_seed), 4)}
        assert res.scores_std == {"accuracy": round(statistics.stdev(per_seed), 4)}
        assert res.metrics["accuracy"] == statistics.fmean(r.metrics["accuracy"] for r in singles)
        assert res.seed_runs == [
            {"seed": s, "scores": r.scores, "metrics": r.metrics, "n_samples": r.n_samples}
            for s, r in zip((0, 1, 2), singles)
        ]
        assert res.n_samples == 48 and res.config["run"]["seeds"] == [0, 1, 2] and "seed" not in res.config["run"]
    # each seed trained in its own run folder, as its single-seed run does, and the seed moved the training
    folders = [Path(d["run_folder"]) for d in multi.details["per_seed"]]
    assert folders == [Path(r.details["run_folder"]) for r in singles] and len(set(folders)) == 3
    w0, w1 = (torch.load(f / "best.pt", weights_only=True) for f in folders[:2])
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    # a 3-seed result is its own identity: never up to date for one seed, nor one seed's for three
    assert multi.config_hash not in {r.config_hash for r in singles}
    kept = [read(seeding.seed_path(tmp_path / "multi", "clip-tiny", "rte", s)) for s in (0, 1, 2)]
    assert [r.scores for r in kept] == [r.scores for r in singles]  # each seed's own result, kept beside
    assert multi.provenance["wall_seconds"] == round(sum(r.provenance["wall_seconds"] for r in kept), 3)

    # the same seeds again, in another order: up to date, nothing rewritten
    path = result_path(tmp_path / "multi", "clip-tiny", "rte")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    again = _rte(tmp_path / "multi", seeds=[2, 0, 1])
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before and again.scores == multi.scores


def test_a_run_killed_after_two_seeds_resumes_with_them(tmp_path):
    """Seed 2 fails (its log folder is a file, so its logger cannot be made); seeds 0 and 1 are kept beside the
    results; the repeated command reuses them -- their run folders, deleted meanwhile, are not made again, their
    logs get no second version -- and trains seed 2 alone."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    blocker = logs / "clip-tiny" / "rte" / "seed2"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    steps = ["task.data.synthetic.finetune.max_steps=4", "task.data.synthetic.finetune.val_every_steps=2"]
    with pytest.raises(OSError):
        _rte(out, *steps, seeds=[0, 1, 2], logger="csv", log_dir=logs)
    assert not result_path(out, "clip-tiny", "rte").exists()
    kept = [read(seeding.seed_path(out, "clip-tiny", "rte", s)) for s in (0, 1)]
    assert not seeding.seed_path(out, "clip-tiny", "rte", 2).exists()
    assert [r.config["run"]["seed"] for r in kept] == [0, 1]
    for r in kept:
        torch.load(Path(r.details["run_folder"]) / "best.pt", weights_only=True)  # trained, then:
        for f in Path(r.details["run_folder"]).iterdir():
            f.unlink()
        Path(r.details["run_folder"]).rmdir()

    blocker.unlink()
    res = _rte(out, *steps, seeds=[0, 1, 2], logger="csv", log_dir=logs)
    assert res.seed_runs[:2] == [
        {"seed": r.config["run"]["seed"], "scores": r.scores, "metrics": r.metrics, "n_samples": r.n_samples}
        for r in kept
    ]
    folders = [Path(d["run_folder"]) for d in res.details["per_seed"]]
    assert not folders[0].exists() and not folders[1].exists() and (folders[2] / "best.pt").is_file()
    assert sorted(p.relative_to(logs).as_posix() for p in logs.glob("clip-tiny/rte/*/version_*")) == [
        "clip-tiny/rte/seed0/version_0",
        "clip-tiny/rte/seed1/version_0",
        "clip-tiny/rte/seed2/version_0",
    ]
    assert res.provenance["seeds_reused"] == [0, 1]
    # the per-seed files stay outside runs/: the table reads every runs/*/*.json as a result
    assert sorted(p.name for p in out.glob("runs/*/*.json")) == ["rte.json"]


def test_seed_and_seeds_conflict_with_one_line(tmp_path, capsys):
    base = ["run", "--model", "clip-tiny", "--task", "rte", "--data", "synthetic", "--output", str(tmp_path)]
    assert main([*base, "--seed", "1", "--seeds", "0,1,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mmbench: error: --seed and --seeds: give one of them (--seed N runs one seed, --seeds 0,1,2 several)"
    assert main([*base, "--seeds", "0,one"]) == 2
    assert "--seeds '0,one': expected integers separated by commas" in capsys.readouterr().err
    assert main([*base, "--seeds", "1,0,1"]) == 2
    assert "a seed is given twice" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--seeds: no seed given"):
        evaluate("clip-tiny", "rte", data="synthetic", seeds=[], output=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing ran


def test_a_single_seed_keeps_the_committed_config_hash(registry):
    """The committed results were written before `--seeds` existed: recomputed, their hashes are the same, so
    they stay up to date; `--seeds 0` alone is the same single-seed run, several seeds are another identity."""
    runs = ROOT / "results" / "synthetic" / "runs"
    for model, task in (("clip-tiny", "sst2"), ("flava-tiny", "cifar10"), ("clip-tiny", "flickr30k")):
        committed = read(runs / model / f"{task}.json")
        info = seeding.run_info(seeding.resolve(None, [0]), None, "synthetic", None)
        assert info == committed.config["run"] and list(info) == list(committed.config["run"])
        mcfg, tcfg = registry.model(model), registry.task(task)
        assert config_hash(mcfg, tcfg, info) == committed.config_hash
        assert config_hash(mcfg, tcfg, seeding.run_info([0, 1, 2], None, "synthetic", None)) != committed.config_hash
    # ... and the committed 3-seed RTE result (`make synthetic-results`) is the several-seed identity
    three = read(runs / "clip-tiny" / "rte.json")
    info = seeding.run_info([0, 1, 2], None, "synthetic", None)
    assert three.config["run"] == info and len(three.seed_runs) == 3
    assert config_hash(registry.model("clip-tiny"), registry.task("rte"), info) == three.config_hash


def test_seeds_apply_where_the_protocol_draws_random_numbers(registry, tmp_path):
    """The probe's hold-out moves with the seed (seed 0 keeps the task's own); a probe on a validation split,
    retrieval, zero-shot classification and in-context trials run once."""
    small = {"data": {"synthetic": {"n_train": 40, "n_val": 12, "samples_per_shard": 16}}}
    mnist, flowers = registry.task("mnist", small), registry.task("flowers102", small)
    mnist_root = synthetic.write(mnist, tmp_path / "mnist", n=10)
    flowers_root = synthetic.write(flowers, tmp_path / "flowers102", n=10)
    assert seeding.not_applicable(mnist, mnist_root) is None
    assert seeding.task_seeds(flowers, flowers_root, [0, 1, 2]) == [0]
    assert "validates on the 'val' split" in seeding.not_applicable(flowers, flowers_root)
    for name in ("coco", "cifar10_zeroshot", "vqav2_fewshot"):
        assert seeding.task_seeds(registry.task(name), tmp_path / "absent", [0, 1]) == [0]
    assert seeding.task_seeds(registry.task("rte"), tmp_path / "absent", [0, 1]) == [0, 1]

    model = build_model(registry.model("clip-tiny"))
    for seed in (0, 1):
        ctx = RunContext(
            model_cfg=registry.model("clip-tiny"),
            data_root=mnist_root,
            data_source="synthetic",
            model_factory=lambda cfg, fresh=False: model,
            trainer=TrainerOptions(accelerator="cpu", progress=False),
            num_workers=0,
            cache_dir=tmp_path / "cache",
            seed=seed,
        )
        d = linear_probe.run(mnist, ctx).details
        assert d["validation"]["seed"] == mnist.linear_probe.holdout_seed + seed and d["n_val"] == 4
        assert d["val_source"].endswith(f"(seed {mnist.linear_probe.holdout_seed + seed})")
