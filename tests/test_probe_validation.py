"""Where the linear probe selects its L2 strength: the task's validation split when the data hold it, under any of
its usual spellings, else a seeded hold-out of train -- recorded in the result, and never a stop over a split the
published files do not contain (most `clip-benchmark/wds_*` sets carry only train and test)."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from probe_checks import assert_sweep_properties, by_hand_tolerance

from mmbench.data import synthetic
from mmbench.lit.trainer import TrainerOptions
from mmbench.models import build_model
from mmbench.protocols import RunContext, linear_probe

SMALL = {"data": {"synthetic": {"n_train": 40, "n_val": 12, "samples_per_shard": 16}}}
OFFICIAL_VAL = {"aircraft", "country211", "dtd", "fer2013", "flowers102", "kitti_distance", "pcam", "rendered_sst2"}


@pytest.fixture(scope="module")
def flowers(tmp_path_factory, registry):
    """Flowers102's synthetic variant with an official `val` split: 40 train / 12 val / 10 test."""
    return synthetic.write(registry.task("flowers102", SMALL), tmp_path_factory.mktemp("d") / "flowers102", n=10)


@pytest.fixture(scope="module")
def factory(registry):
    model = build_model(registry.model("clip-tiny"))  # built once: every run here reads the same features
    return lambda cfg, fresh=False: model


def _run(registry, task, root, cache, factory):
    ctx = RunContext(
        model_cfg=registry.model("clip-tiny"),
        data_root=root,
        data_source="synthetic",
        model_factory=factory,
        trainer=TrainerOptions(accelerator="cpu", progress=False),
        num_workers=0,
        cache_dir=cache,
    )
    return linear_probe.run(task, ctx)


def test_every_spelling_of_the_validation_split_is_used(registry, flowers, tmp_path, factory):
    """`val` (the YAML's name), `valid` (CLIP_benchmark's Country211) and `validation`: the same samples under
    another folder name give the same numbers, and the result names the folder it read."""
    task = registry.task("flowers102")
    outs = {}
    for spelling in ("val", "valid", "validation"):
        root = shutil.copytree(flowers, tmp_path / spelling / "flowers102")
        if spelling != "val":
            (root / "val").rename(root / spelling)
        outs[spelling] = out = _run(registry, task, root, tmp_path / "cache", factory)
        d = out.details
        assert d["validation"] == {"source": "split", "split": spelling, "requested": "val"}
        assert d["val_source"] == f"split {spelling!r}" and (d["n_train"], d["n_val"]) == (40, 12)
        assert set(d["feature_cache"]) == {"train", spelling, "test"}
        assert_sweep_properties(d, 1 / 12)  # 6 colours x 2 samples each
    ref = outs["val"]
    for out in outs.values():  # same machine, same features: exactly the same path
        assert out.metrics == ref.metrics and out.details["sweep"] == ref.details["sweep"]


def test_train_and_test_only_holds_out_part_of_train_and_records_it(registry, flowers, tmp_path, factory, caplog):
    root = shutil.copytree(flowers, tmp_path / "flowers102")
    shutil.rmtree(root / "val")
    with caplog.at_level(logging.WARNING, logger="mmbench"):
        out = _run(registry, registry.task("flowers102"), root, tmp_path / "cache", factory)
    d = out.details
    assert d["validation"] == {"source": "holdout", "of": "train", "fraction": 0.1, "seed": 0, "requested": "val"}
    assert d["val_source"] == "hold-out 0.1 of 'train' (seed 0); no 'val' split in the data"
    assert (d["n_train"], d["n_val"], out.n_samples) == (36, 4, 10) and set(d["feature_cache"]) == {"train", "test"}
    warned = [r.getMessage() for r in caplog.records if "hold-out" in r.getMessage()]
    assert len(warned) == 1 and str(root) in warned[0] and "no 'val', 'valid', 'validation' split" in warned[0]
    # the held-out samples are train's, chosen by the seed: their labels decide the tie tolerance
    labels = torch.tensor([i % 6 for i in range(40)])  # synthetic labels cycle through the 6 colours
    held = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:4]
    assert_sweep_properties(d, by_hand_tolerance("mean_per_class", labels[held]))


def test_no_task_stops_over_a_validation_split_its_data_lack(registry, tmp_path, factory):
    """Every vision task that names an official validation split runs on data with only train and test."""
    named = {n for n in registry.expand(groups=["vision"]) if registry.task(n).linear_probe.val_split}
    assert named == OFFICIAL_VAL
    for name in sorted(named):
        task = registry.task(name, {"data": {"synthetic": {"n_train": 20, "n_val": 0, "samples_per_shard": 32}}})
        root = synthetic.write(task, tmp_path / "data" / name, n=6)
        assert not (root / "val").exists()
        d = _run(registry, task, root, tmp_path / "cache", factory).details
        assert d["validation"]["source"] == "holdout" and d["validation"]["requested"] == "val", name
        assert (d["n_train"], d["n_val"], d["n_test"]) == (18, 2, 6), name


def test_a_rerun_on_data_without_the_validation_split_is_up_to_date(flowers, tmp_path):
    """The result's data fingerprint covers the splits the probe read, whichever spelling (or none) the data hold:
    a second run on the same train/test-only folder is skipped, and moving `val` in under another spelling is new
    data that runs again."""
    from mmbench import evaluate

    root = shutil.copytree(flowers, tmp_path / "data" / "flowers102")
    shutil.rmtree(root / "val")
    kw = dict(data_root=tmp_path / "data", output=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    first = evaluate("clip-tiny", "flowers102", num_workers=0, **kw)[0]
    assert first.details["validation"]["source"] == "holdout" and first.data_fingerprint is not None
    again = evaluate("clip-tiny", "flowers102", num_workers=0, **kw)[0]
    assert again.provenance["finished_at"] == first.provenance["finished_at"]  # skipped: read back, not re-run
    shutil.copytree(flowers / "val", root / "valid")
    third = evaluate("clip-tiny", "flowers102", num_workers=0, **kw)[0]
    assert third.data_fingerprint != first.data_fingerprint and third.details["validation"]["split"] == "valid"
