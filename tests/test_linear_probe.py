"""The linear-probe protocol end to end under a real Trainer: numbers reproduced by hand, the feature cache (hits
never build the model, every key part misses; its faults: test_feature_cache_faults.py), bad data, and 2-process
DDP = 1 process."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from probe_checks import assert_sweep_properties, by_hand_tolerance

import mmbench
from mmbench import evaluate
from mmbench.data import open_reader, synthetic
from mmbench.errors import DataError
from mmbench.lit.trainer import TrainerOptions
from mmbench.metrics.accuracy import mean_per_class, top1
from mmbench.models import build_model
from mmbench.models.fingerprint import weights_fingerprint
from mmbench.protocols import RunContext, linear_probe
from mmbench.protocols import features as features_mod
from mmbench.protocols.features import FeatureCache, feature_key
from mmbench.protocols.logreg import fit_logreg, sweep_l2
from mmbench.results.store import result_path

# Flowers102's synthetic variant: colour labels (6 classes), an official val split, mean per-class accuracy.
FLOWERS = {"data": {"synthetic": {"n_train": 60, "n_val": 24, "samples_per_shard": 16}}}


@pytest.fixture(scope="module")
def flowers(tmp_path_factory, registry):
    return synthetic.write(registry.task("flowers102", FLOWERS), tmp_path_factory.mktemp("d") / "flowers102", n=31)


@pytest.fixture(scope="module")
def probed(tmp_path_factory, flowers):
    """One real run: (result, its cache dir)."""
    base = tmp_path_factory.mktemp("run")
    res = evaluate(
        "clip-tiny",
        "flowers102",
        data_root=flowers.parent,
        output=base / "out",
        cache_dir=base / "cache",
        progress=False,
        num_workers=0,
    )[0]
    return res, base / "cache"


def _ctx(registry, root, cache, factory=None, **kw) -> RunContext:
    def refuse(cfg, fresh=False):
        raise RuntimeError("the model was built")

    return RunContext(
        model_cfg=kw.pop("model_cfg", registry.model("clip-tiny")),
        data_root=root,
        data_source="synthetic",
        model_factory=factory or refuse,
        trainer=kw.pop("trainer", TrainerOptions(accelerator="cpu", progress=False)),
        num_workers=0,
        cache_dir=cache,
        **kw,
    )


def test_result_is_complete_and_far_above_chance(registry, flowers, probed):
    res, _ = probed
    assert res.status == "ok" and res.protocol == "linear_probe" and res.primary == "mean_per_class"
    assert set(res.metrics) == {"top1", "mean_per_class"} and all(0 <= v <= 1 for v in res.metrics.values())
    assert res.scores == {"mean_per_class": pytest.approx(100 * res.metrics["mean_per_class"])}
    d = res.details
    assert (d["n_train"], d["n_val"], d["n_test"], res.n_samples) == (60, 24, 31, 31)
    assert d["val_source"] == "split 'val'" and d["num_classes"] == 6 and d["feature_dim"] == 32
    assert d["validation"] == {"source": "split", "split": "val", "requested": "val"}
    assert d["feature_cache"] == {"train": "miss", "val": "miss", "test": "miss"}
    # Which strength wins among near-ties, and so how many the refinement visits, depends on the CPU's float path
    # (AVX-512 vs AVX2 vs default kernels); what the sweep must do does not.
    val_labels = torch.tensor([r["label"] for r in open_reader(registry.task("flowers102"), flowers).samples("val")])
    assert_sweep_properties(d, by_hand_tolerance("mean_per_class", val_labels))
    assert d["selection"]["tolerance"] == pytest.approx(1 / 24)  # 6 colours x 4 samples each: one sample = 1/24
    assert d["refit"]["converged"]
    assert res.metrics["mean_per_class"] > 3 * (1 / 6)  # colour of the object, 6 classes


def test_numbers_reproduced_by_hand(registry, flowers, probed):
    """Features computed without Lightning match the cached ones; the sweep and refit redone on them give the
    result's strength and metrics."""
    res, cache_dir = probed
    task = registry.task("flowers102")
    reader = open_reader(task, flowers)
    model = build_model(registry.model("clip-tiny"))
    tf = model.image_transform()
    cache = FeatureCache(cache_dir)
    weights = weights_fingerprint(registry.model("clip-tiny"), cache_dir)
    ctx = _ctx(registry, flowers, cache_dir)
    split_feats = {}
    for split in ("train", "val", "test"):
        recs = list(reader.samples(split))
        with torch.no_grad():
            by_hand = model.image_features(torch.stack([tf(r["image"]) for r in recs]))
        cached = cache.load(feature_key(ctx, reader, split, weights)[0])
        torch.testing.assert_close(cached.features, by_hand, atol=1e-5, rtol=1e-5)
        assert cached.labels.tolist() == [r["label"] for r in recs]
        split_feats[split] = cached

    tr, va, te = split_feats["train"], split_feats["val"], split_feats["test"]

    def evaluate_l2(l2, warm):
        fit = fit_logreg(tr.features, tr.labels, 6, l2, init=warm)
        return mean_per_class(fit.predict(va.features), va.labels), fit

    sweep = sweep_l2(evaluate_l2, tolerance=by_hand_tolerance("mean_per_class", va.labels))
    assert sweep.best_l2 == pytest.approx(res.details["l2"])  # same machine, same features: the same path
    assert [p.score for p in sweep.points] == [p["val"] for p in res.details["sweep"]]
    final = fit_logreg(
        torch.cat([tr.features, va.features]),
        torch.cat([tr.labels, va.labels]),
        6,
        sweep.best_l2,
        init=sweep.best_state,
    )
    pred = final.predict(te.features)
    assert res.metrics == pytest.approx(
        {"top1": top1(pred, te.labels), "mean_per_class": mean_per_class(pred, te.labels)}
    )


def test_cache_hit_never_builds_the_model_and_a_miss_does(registry, flowers, probed):
    res, cache_dir = probed
    task = registry.task("flowers102")
    ctx = _ctx(registry, flowers, cache_dir)
    out = linear_probe.run(task, ctx)
    assert not ctx.model_loaded and out.metrics == res.metrics
    assert out.details["feature_cache"] == {"train": "hit", "val": "hit", "test": "hit"}
    with pytest.raises(RuntimeError, match="the model was built"):
        linear_probe.run(task, _ctx(registry, flowers, cache_dir, limit=20))  # --limit is part of the key


def test_every_key_part_misses_and_nothing_else_does(registry, flowers, tmp_path, monkeypatch):
    task = registry.task("flowers102")
    cfg = registry.model("clip-tiny")

    def key(ctx, root=flowers, split="train", opts=None):
        t = registry.task("flowers102", {"data": {"options": opts}} if opts else None)
        return feature_key(ctx, open_reader(t, root), split, weights_fingerprint(ctx.model_cfg))[0]

    base = key(_ctx(registry, flowers, tmp_path))
    moved = shutil.copytree(flowers, tmp_path / "elsewhere" / "flowers102")  # copy2 keeps sizes and mtimes
    same = [
        key(_ctx(registry, flowers, tmp_path, model_cfg=dataclasses.replace(cfg, name="alias", description="x"))),
        key(_ctx(registry, flowers, tmp_path / "other-cache", batch_size=7)),
        key(_ctx(registry, moved, tmp_path), root=moved),
    ]
    assert same == [base] * 3
    preprocess = dataclasses.replace(cfg.preprocess, mean=[0.5, 0.5, 0.5])
    changed = {
        "weights": key(_ctx(registry, flowers, tmp_path, model_cfg=dataclasses.replace(cfg, init_seed=1))),
        "preprocess": key(_ctx(registry, flowers, tmp_path, model_cfg=dataclasses.replace(cfg, preprocess=preprocess))),
        "precision": key(_ctx(registry, flowers, tmp_path, trainer=TrainerOptions(precision="bf16-mixed"))),
        "split": key(_ctx(registry, flowers, tmp_path), split="val"),
        "reader options": key(_ctx(registry, flowers, tmp_path), opts={"wds_classification": {"x": 1}}),
        "limit": key(_ctx(registry, flowers, tmp_path, limit=10)),
    }
    os.utime(moved / "train" / "1.tar", ns=(1, 1))  # a shard rewritten: same name, new mtime
    changed["data files"] = key(_ctx(registry, moved, tmp_path), root=moved)
    monkeypatch.setattr(features_mod, "FEATURE_VERSION", features_mod.FEATURE_VERSION + 1)
    changed["feature code version"] = key(_ctx(registry, flowers, tmp_path))
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed
    assert task.name == "flowers102"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"webp": b"\x00garbage"}, r"flowers102/test/1\.tar:s0000020\.webp: cannot decode image"),
        ({"cls": b"99"}, r"flowers102/test/1\.tar:s0000020: label 99 is outside the 6 classes of classnames\.txt"),
    ],
)
def test_bad_sample_fails_with_shard_and_key_and_leaves_no_partial_entry(registry, flowers, tmp_path, bad, message):
    root = shutil.copytree(flowers, tmp_path / "flowers102")
    with tarfile.open(flowers / "test" / "1.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    with wds.TarWriter(str(root / "test" / "1.tar")) as sink:
        for i in range(16, 31):
            sample = {"__key__": f"s{i:07d}", "webp": members[f"s{i:07d}.webp"], "cls": members[f"s{i:07d}.cls"]}
            sink.write({**sample, **(bad if i == 20 else {})})
    cache = tmp_path / "cache"
    ctx = _ctx(registry, root, cache, factory=lambda cfg, fresh=False: build_model(cfg))
    with pytest.raises(DataError, match=message) as err:
        linear_probe.run(registry.task("flowers102"), ctx)
    assert "\n" not in str(err.value)
    entries = sorted((cache / "features").rglob("*"))
    assert not [p for p in entries if p.name.startswith(".") or p.suffix == ".tmp"]  # no partial file
    complete = [p for p in entries if p.suffix == ".pt"]
    assert len(complete) == 2  # train and val were extracted before test failed: complete, readable
    assert all(FeatureCache(cache).load(p.stem) is not None for p in complete)


def test_damaged_val_split_and_wrong_class_count(registry, flowers, tmp_path):
    """A validation split that is there but damaged is an error naming it, never a silent hold-out (an absent one
    is held out: tests/test_probe_validation.py)."""
    root = shutil.copytree(flowers, tmp_path / "flowers102")
    (root / "val" / "nshards.txt").unlink()
    with pytest.raises(DataError, match=r"task 'flowers102': 'val' split: .*flowers102/val/nshards\.txt: missing"):
        linear_probe.run(registry.task("flowers102"), _ctx(registry, root, tmp_path))
    ctx = dataclasses.replace(_ctx(registry, flowers, tmp_path), data_source="real")
    with pytest.raises(DataError, match=r"classnames\.txt: 6 classes, but task 'flowers102' has 102"):
        linear_probe.run(registry.task("flowers102"), ctx)


def test_vision_registry(registry):
    names = registry.expand(groups=["vision"])
    assert len(names) == 22 and names[0] == "imagenet" and names[-1] == "country211"
    mean_per_class_tasks = {"aircraft", "pets", "caltech101", "flowers102"}
    for name in names:
        t = registry.task(name)
        assert t.protocol == "linear_probe" and t.domain == "vision" and t.metrics == ["top1", "mean_per_class"]
        expected = "mean_per_class" if name in mean_per_class_tasks else "top1"
        assert t.scores == [expected] and t.primary == expected, name
        assert t.display_name and t.description and t.data.source and t.linear_probe.num_classes
        assert (t.linear_probe.val_split == "val") == (t.data.synthetic.get("n_val", 0) > 0), name
        assert t.data.format == ("image_folder" if name in ("food101", "ucf101") else "wds_classification")
    assert registry.task("clevr_counts").data.synthetic["label"] == "count"


@pytest.mark.multiprocess
def test_two_process_ddp_equals_single_process(tmp_path, registry):
    """2 CPU processes (gloo), 25 train / 13 test samples in blocks of 4: ranks get different counts; the
    gathered features are bitwise the single-process ones, and so are the numbers."""
    task = registry.task("clevr_counts", {"data": {"synthetic": {"n_train": 25, "samples_per_shard": 8}}})
    data = synthetic.write(task, tmp_path / "data" / "clevr_counts", n=13, seed=3)
    cmd = [sys.executable, "-m", "mmbench", "run", "--model", "clip-tiny", "--task", "clevr_counts", "--no-progress"]
    cmd += ["--data-root", str(data.parent), "--num-workers", "0", "--accelerator", "cpu", "--batch-size", "4"]
    cmd += ["--devices", "2", "--output", str(tmp_path / "2"), "--cache-dir", str(tmp_path / "c2")]
    # The children import this checkout's mmbench, not whichever one the interpreter has installed.
    env = {**os.environ, "PYTHONPATH": str(Path(mmbench.__file__).parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluate(
        "clip-tiny",
        "clevr_counts",
        data_root=data.parent,
        accelerator="cpu",
        batch_size=4,
        num_workers=0,
        output=tmp_path / "1",
        cache_dir=tmp_path / "c1",
        progress=False,
    )
    one, two = (json.loads(result_path(tmp_path / d, "clip-tiny", "clevr_counts").read_text()) for d in "12")
    assert two["provenance"]["device"] == "cpu x2" and one["provenance"]["device"] == "cpu x1"
    assert two["metrics"] == one["metrics"] and two["details"]["sweep"] == one["details"]["sweep"]
    assert two["details"]["n_train"] + two["details"]["n_val"] == 25 and two["n_samples"] == 13
    files = {d: sorted((tmp_path / f"c{d}" / "features").rglob("*.pt")) for d in "12"}
    assert [p.name for p in files["1"]] == [p.name for p in files["2"]] and len(files["1"]) == 2
    for a, b in zip(files["1"], files["2"]):
        ea, eb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        assert torch.equal(ea["features"], eb["features"]) and torch.equal(ea["labels"], eb["labels"])
