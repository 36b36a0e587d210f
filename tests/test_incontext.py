"""The in-context protocol end to end on tiny generative presets and synthetic data: per-trial results, the class
scores recomputed by hand, n/a for models that cannot generate, 2 processes == 1, kill -9 then resume == an
uninterrupted run, RICES through the feature cache."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

from mmbench.api import evaluate
from mmbench.cli import main
from mmbench.data import open_reader
from mmbench.data.prompts import PromptBuilder, effective_shots, query_set
from mmbench.data.synthetic import ensure
from mmbench.models import build_model
from mmbench.paths import cache_dir
from mmbench.results.store import read, result_path

GENERATORS = ["flamingo-tiny", "idefics-tiny"]


def _fewshot(model: str, task: str, out: Path, *sets: str, limit: int = 12, batch: int = 4, **kw):
    (res,) = evaluate(
        model, task, data="synthetic", limit=limit, batch_size=batch, output=out, num_workers=0, progress=False,
        overrides=list(sets), **kw,
    )  # fmt: skip
    return res


@pytest.mark.parametrize("model", GENERATORS)
def test_fewshot_vqa_writes_per_trial_scores_with_their_mean_and_std(model, tmp_path):
    res = _fewshot(model, "vqav2_fewshot", tmp_path, "task.incontext.shots=4", "task.incontext.trials=3")
    assert res.status == "ok" and res.n_samples == 12 and res.protocol == "incontext"
    assert read(result_path(tmp_path, model, "vqav2_fewshot-4shot")) == res
    trials = res.details["trials"]
    assert [t["seed"] for t in trials] == [42, 43, 44] and res.details["shots"] == 4
    per_trial = [t["scores"]["vqa_accuracy"] for t in trials]
    assert res.scores["vqa_accuracy"] == pytest.approx(statistics.fmean(per_trial), abs=1e-9)
    assert res.details["std"]["vqa_accuracy"] == pytest.approx(statistics.stdev(per_trial), abs=1e-9)
    answers = json.loads(Path(res.details["predictions"]).read_text())
    assert len(answers) == 12 and all(isinstance(a["answer"], str) for a in answers)

    zero = _fewshot(model, "vqav2_fewshot", tmp_path, "task.incontext.shots=0")
    assert zero.details["demonstrations_per_query"] == 2 and zero.details["text_only_demonstrations"]
    assert result_path(tmp_path, model, "vqav2_fewshot-4shot").is_file()  # 0 shots did not overwrite 4 shots


@pytest.mark.parametrize("model", GENERATORS)
def test_hateful_memes_scores_are_the_class_loglikelihoods(model, registry, tmp_path):
    """ROC-AUC of the run equals sklearn's on P(yes) recomputed here from the same prompts and the wrapper."""
    res = _fewshot(model, "hateful_memes_fewshot", tmp_path, "task.incontext.shots=2", limit=10)
    task = registry.task("hateful_memes_fewshot", {"incontext": {"shots": 2}})
    reader = open_reader(task, ensure(task, cache_dir()))
    wrapper = build_model(registry.model(model))
    p = task.incontext
    train = reader.random_access(p.train_split)
    builder = PromptBuilder(
        train, wrapper.image_transform(), p.demonstration, p.query, list(p.class_names), 2, effective_shots(2, 2),
        seed=42, pool=query_set(len(train), p.query_set_size, 42),
    )  # fmt: skip
    items = [builder(r) for r in reader.random_access(task.data.split, 10)]
    with torch.no_grad():
        scores = wrapper.loglikelihood([it["images"] for it in items], [it["prompt"] for it in items], ["no", "yes"],
                                       normalize_length=True)  # fmt: skip
    p_yes = scores.double().softmax(-1)[:, 1].numpy()
    labels = [it["label"] for it in items]
    assert len(set(labels)) == 2
    assert res.metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, p_yes), abs=1e-6)


@pytest.mark.parametrize("model", GENERATORS)
def test_captioning_scores_the_runs_captions_against_their_own_references(model, registry, tmp_path):
    """CIDEr of the result equals `cider` recomputed from the predictions file and the split's references; the
    references gathered with each caption are that image's (checked against the reader), so that a caption model
    that copied its first reference would score as pycocoevalcap scores it."""
    from mmbench.metrics.cider import cider

    res = _fewshot(model, "coco_fewshot", tmp_path, "task.incontext.shots=2", limit=10, cache_dir=tmp_path / "c")
    task = registry.task("coco_fewshot")
    refs = {
        r["index"]: r["captions"] for r in open_reader(task, ensure(task, tmp_path / "c")).random_access("test", 10)
    }
    captions = {row["index"]: row["caption"] for row in json.loads(Path(res.details["predictions"]).read_text())}
    assert sorted(captions) == sorted(refs) == list(range(10))
    assert res.metrics["cider"] == cider(captions, refs).score
    (saved,) = (tmp_path / "c" / "incontext" / model / "coco_fewshot").glob("*/trial-42/outputs.pt")
    out = torch.load(saved, weights_only=True)
    gathered = {
        int(i): bytes(b for b in r.tolist() if b).decode().split("\n") for i, r in zip(out["index"], out["references"])
    }
    assert gathered == refs
    copied = cider({i: refs[i][0] for i in refs}, refs).score
    assert copied > 1.0  # a caption equal to one of five references scores far above a random model's


def test_a_model_that_cannot_generate_is_na_per_shot_count(tmp_path):
    res = _fewshot("clip-tiny", "vqav2_fewshot", tmp_path, "task.incontext.shots=8")
    assert res.status == "n/a" and "GENERATE" in res.reason and res.details == {"shots": 8, "demonstrations": "random"}
    assert read(result_path(tmp_path, "clip-tiny", "vqav2_fewshot-8shot")).status == "n/a"


def _cli(model: str, task: str, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "mmbench", "run", "--model", model, "--task", task, "--data", "synthetic",
        "--no-progress", "--num-workers", "0", "--accelerator", "cpu", "--output", str(out), "--cache-dir",
        str(cache), *extra,
    ]  # fmt: skip


@pytest.mark.multiprocess
def test_two_processes_give_exactly_the_one_process_numbers(tmp_path):
    """Generation (VQAv2: answers and accuracy) and log-likelihood (Hateful Memes) on 2 gloo processes, blocks of 2
    queries shared 3/2, equal the 1-process run; one cache, `--fresh`, so neither run reuses the other's trials."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    extra = [
        "--limit",
        "10",
        "--batch-size",
        "2",
        "--set",
        "task.incontext.shots=2",
        "--set",
        "task.incontext.trials=2",
    ]
    tasks = ["vqav2_fewshot", "--task", "hateful_memes_fewshot"]
    for devices in ("1", "2"):
        cmd = _cli("flamingo-tiny", tasks[0], tmp_path / devices, tmp_path / "cache", *tasks[1:], *extra, "--fresh")
        proc = subprocess.run([*cmd, "--devices", devices], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for task in ("vqav2_fewshot", "hateful_memes_fewshot"):
        one, two = (read(result_path(tmp_path / d, "flamingo-tiny", f"{task}-2shot")) for d in ("1", "2"))
        assert two.provenance["device"] == "cpu x2" and one.provenance["device"] == "cpu x1"
        assert two.metrics == one.metrics and two.details["trials"] == one.details["trials"]
        if "predictions" in one.details:
            assert Path(one.details["predictions"]).read_text() == Path(two.details["predictions"]).read_text()


def test_kill_then_resume_gives_the_uninterrupted_numbers(tmp_path):
    """kill -9 once some batches are saved (every batch, here); the same command resumes and matches a run that
    was never interrupted (the same cache, `--fresh --redo`: from scratch), answers included."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "MMBENCH_PARTIAL_SAVE_SECONDS": "0"}
    extra = [
        "--limit",
        "24",
        "--batch-size",
        "2",
        "--set",
        "task.incontext.shots=4",
        "--set",
        "task.incontext.trials=2",
    ]
    killed = _cli("flamingo-tiny", "vqav2_fewshot", tmp_path / "killed", tmp_path / "cache", *extra)
    proc = subprocess.Popen(killed, env=env, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "cache" / "incontext" / "flamingo-tiny" / "vqav2_fewshot"
    deadline = time.monotonic() + 300
    while len(list(state.glob("*/trial-42/part-r0-*.pt"))) < 3:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no batch saved in 300 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not result_path(tmp_path / "killed", "flamingo-tiny", "vqav2_fewshot-4shot").exists()

    resumed = subprocess.run(killed, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming trial seed 42 with" in resumed.stderr
    whole = _cli("flamingo-tiny", "vqav2_fewshot", tmp_path / "whole", tmp_path / "cache", *extra, "--fresh", "--redo")
    done = subprocess.run(whole, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "resuming" not in done.stderr, done.stderr[-2000:]
    a, b = (read(result_path(tmp_path / d, "flamingo-tiny", "vqav2_fewshot-4shot")) for d in ("killed", "whole"))
    assert a.metrics == b.metrics and a.details["trials"] == b.details["trials"]
    assert Path(a.details["predictions"]).read_text() == Path(b.details["predictions"]).read_text()


def test_rices_picks_demonstrations_through_the_feature_cache(tmp_path, caplog):
    sets = ["task.incontext.shots=2", "task.incontext.demonstrations=rices", "task.incontext.rices_model=clip-tiny"]
    res = _fewshot("flamingo-tiny", "hateful_memes_fewshot", tmp_path, *sets, limit=8)
    assert res.status == "ok" and res.details["demonstrations"] == "rices" and res.details["rices_model"] == "clip-tiny"
    assert read(result_path(tmp_path, "flamingo-tiny", "hateful_memes_fewshot-2shot-rices")) == res
    entries = list((cache_dir() / "features").rglob("*.pt"))
    kinds = {torch.load(e, weights_only=True)["parts"] for e in entries}
    assert any('"image_embeddings"' in k for k in kinds)
    with caplog.at_level("INFO", logger="mmbench"):
        again = _fewshot("flamingo-tiny", "hateful_memes_fewshot", tmp_path, *sets, limit=8, redo=True, fresh=True)
    assert "features from the cache" in caplog.text and again.metrics == res.metrics


def test_cli_runs_the_issue_command(tmp_path):
    """The command of the issue, as written in the README."""
    rc = main([
        "run", "--model", "flamingo-tiny", "--task", "vqav2_fewshot", "--set", "task.incontext.shots=4", "--data",
        "synthetic", "--limit", "8", "--no-progress", "--num-workers", "0", "--output", str(tmp_path),
    ])  # fmt: skip
    assert rc == 0
    assert read(result_path(tmp_path, "flamingo-tiny", "vqav2_fewshot-4shot")).details["trials"]
