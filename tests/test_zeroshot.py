"""Zero-shot classification: the 22 tasks read their linear-probe task's data with CLIP's prompt lists, the numbers
equal CLIP_benchmark's own classifier on the same model and images, the class-embedding cache spares the text tower,
prompt/label mismatches are one clear error, models without contrastive embeddings are n/a, and 2-process DDP = 1."""

from __future__ import annotations

import builtins
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds
from helpers import randomize_

from mmbench import evaluate
from mmbench.data.synthetic.scene import render, sample_scene
from mmbench.errors import DataError
from mmbench.lit.trainer import TrainerOptions
from mmbench.models import build_model
from mmbench.protocols import RunContext, zeroshot
from mmbench.results.store import result_path

N_PER_CLASS = 3


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory, registry) -> Path:
    """A CIFAR-10-shaped WebDataset (not marked synthetic, so the task's own prompt lists are used): the published
    layout's `classnames.txt` (CLIP's class names, label order) and 10 x 3 scene images, labels `i % 10`."""
    root = tmp_path_factory.mktemp("data") / "cifar10"
    names = registry.task("cifar10_zeroshot").zeroshot.classnames
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(names) + "\n")
    with wds.TarWriter(str(root / "test" / "0.tar")) as sink:
        for i in range(10 * N_PER_CLASS):
            rng = random.Random(i)
            buf = io.BytesIO()
            render(sample_scene(rng), 32, jitter=rng).save(buf, format="PNG")
            sink.write({"__key__": f"s{i:07d}", "png": buf.getvalue(), "cls": str(i % 10).encode()})
    (root / "test" / "nshards.txt").write_text("1\n")
    return root


def _ctx(registry, root: Path, cache: Path, factory, model: str = "clip-tiny") -> RunContext:
    return RunContext(
        model_cfg=registry.model(model),
        data_root=root,
        data_source="real",
        model_factory=factory,
        trainer=TrainerOptions(accelerator="cpu", progress=False),
        num_workers=0,
        cache_dir=cache,
    )


def _refuse(cfg, fresh=False):
    raise RuntimeError("the model was built")


def test_the_22_tasks_read_their_linear_probe_data_with_prompts_for_every_class(registry):
    """Each `<lp>_zeroshot` task reads exactly its linear-probe task's data (folder, format, split, source), and
    its prompt file has one class name per class of the real dataset (`linear_probe.num_classes`)."""
    vision = registry.groups["vision"]
    assert registry.groups["zeroshot"] == [f"{t}_zeroshot" for t in vision] and len(vision) == 22
    for lp_name in vision:
        lp, zs = registry.task(lp_name), registry.task(f"{lp_name}_zeroshot")
        assert zs.protocol == "zeroshot" and zs.primary == lp.primary and zs.scores == lp.scores
        assert zs.data.dirname == lp_name and zs.metrics == ["top1", "top5", "mean_per_class"]
        for key in ("format", "alt_formats", "split", "source", "options", "root"):
            assert getattr(zs.data, key) == getattr(lp.data, key), (lp_name, key)
        p = zs.zeroshot
        assert len(p.classnames) == lp.linear_probe.num_classes, lp_name
        assert len(set(p.classnames)) == len(p.classnames) or lp_name == "imagenet", lp_name  # CLIP's ImageNet
        assert p.templates and all("{c}" in t for t in p.templates)
        assert Path(p.prompts_file).name == f"{lp_name}.yaml" and "CLIP" in p.classnames_source + p.templates_source


def test_task_prompts_on_real_shaped_data_and_the_class_cache_spares_the_text_tower(registry, cifar10, tmp_path):
    task = registry.task("cifar10_zeroshot")
    model = build_model(registry.model("clip-tiny"))
    calls = []
    model.model.text_model.register_forward_hook(lambda mod, args, out: calls.append(1))
    cache = tmp_path / "cache"
    cold = zeroshot.run(task, _ctx(registry, cifar10, cache, lambda cfg, fresh=False: model))
    d = cold.details
    assert d["prompt_source"] == "task" and d["names_agreeing"] == 10 and d["num_classes"] == 10
    assert d["num_templates"] == 18 and d["prompts_file"] == "tasks/vision/zeroshot/cifar10.yaml"
    assert d["cache"] == {"image_embeddings": "miss", "class_embeddings": "miss"} and cold.n_samples == 30
    assert len(calls) == 1 + (10 * 18 - 1) // 64  # 180 prompts in batches of 64
    assert set(cold.metrics) == {"top1", "top5", "mean_per_class"}

    # Warm: every entry cached, the model is never built (the factory refuses).
    warm_ctx = _ctx(registry, cifar10, cache, _refuse)
    warm = zeroshot.run(task, warm_ctx)
    assert not warm_ctx.model_loaded and warm.metrics == cold.metrics
    assert warm.details["cache"] == {"image_embeddings": "hit", "class_embeddings": "hit"}

    # Image embeddings gone, class matrix cached: the model is built for the images, its text tower never runs.
    for entry in (cache / "features").rglob("*.pt"):
        entry.unlink()
    calls.clear()
    images_only = zeroshot.run(task, _ctx(registry, cifar10, cache, lambda cfg, fresh=False: model))
    assert calls == [] and images_only.metrics == cold.metrics
    assert images_only.details["cache"] == {"image_embeddings": "miss", "class_embeddings": "hit"}

    # Other templates are another class matrix: the text tower runs again.
    other = registry.task("cifar10_zeroshot", {"zeroshot": {"templates": ["a photo of a {c}."]}})
    zeroshot.run(other, _ctx(registry, cifar10, cache, lambda cfg, fresh=False: model))
    assert len(calls) == 1


@pytest.mark.parametrize(
    "names, message",
    [
        (lambda n: n[:9], r"cifar10/classnames\.txt: 10 classes, but the prompt class names of task 'cifar10_zeroshot'"
         r" key 'zeroshot\.classnames' \(tasks/vision/zeroshot/cifar10\.yaml\) are 9"),
        (lambda n: [n[1], n[0], *n[2:]], r"cifar10/classnames\.txt: line 1 is 'airplane', which is prompt class 2 of "
         r"task 'cifar10_zeroshot' .*: the class orders differ"),
    ],
)  # fmt: skip
def test_prompt_and_label_mismatch_is_one_error_naming_the_files(registry, cifar10, tmp_path, names, message):
    base = registry.task("cifar10_zeroshot").zeroshot.classnames
    task = registry.task("cifar10_zeroshot", {"zeroshot": {"classnames": names(list(base))}})
    with pytest.raises(DataError, match=message) as err:
        zeroshot.run(task, _ctx(registry, cifar10, tmp_path, _refuse))
    assert "\n" not in str(err.value)


def test_synthetic_group_tasks_use_the_datasets_own_prompts_and_a_model_without_contrastive_is_na(tmp_path):
    """Two of the 22 on synthetic data (one with < 5 classes: top5 null); flamingo-tiny has no contrastive
    embeddings: n/a with the reason, no model built."""
    tasks = ["cifar10_zeroshot", "food101_zeroshot"]
    common = dict(data="synthetic", output=tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    results = evaluate("clip-tiny", tasks, num_workers=0, **common)
    assert [r.status for r in results] == ["ok", "ok"]
    cifar, food = (json.loads(result_path(tmp_path / "out", "clip-tiny", t).read_text()) for t in tasks)
    assert cifar["metrics"]["top5"] is None and cifar["details"]["top5"] == "null: 3 classes (< 5)"
    assert food["metrics"]["top5"] is not None and food["details"]["num_classes"] == 6
    assert cifar["details"]["prompt_source"] == "dataset"
    assert cifar["details"]["templates_source"].endswith("zeroshot_classification_templates.txt")
    assert food["details"]["templates_source"].startswith("CLIP_benchmark")  # image folders carry no templates file
    assert cifar["scores"] == {"top1": pytest.approx(100 * cifar["metrics"]["top1"])}
    (na,) = evaluate("flamingo-tiny", "cifar10_zeroshot", **common)
    assert na.status == "n/a" and "CONTRASTIVE" in na.reason and "zero-shot classification" in na.reason


def test_parity_with_clip_benchmark_zero_shot_classifier(registry, cifar10, tmp_path, monkeypatch):
    """CLIP_benchmark 1.6.2's `zero_shot_classifier`, `run_classification` and `evaluate` on the same (fully
    randomised) CLIP, tokenizer, prompts and images: the same logits (theirs are x100) and the same accuracies."""
    cb = pytest.importorskip(
        "clip_benchmark.metrics.zeroshot_classification", reason="pip install --no-deps -r requirements/parity.txt"
    )
    task = registry.task("cifar10_zeroshot")
    model = randomize_(build_model(registry.model("clip-tiny")), seed=3).eval()
    cache = tmp_path / "cache"
    ours = zeroshot.run(task, _ctx(registry, cifar10, cache, lambda cfg, fresh=False: model))
    (features,) = (torch.load(p, weights_only=True) for p in (cache / "features").rglob("*.pt"))
    (classes,) = (torch.load(p, weights_only=True) for p in (cache / "zeroshot").rglob("*.pt"))
    our_logits = zeroshot.zeroshot_logits(features["features"], classes["class_embeddings"])  # (30, 10)

    hf = model.model

    class OpenClipLike(torch.nn.Module):  # the interface CLIP_benchmark calls; both towers are the HF model's own
        def encode_image(self, images):
            return hf.get_image_features(pixel_values=images, interpolate_pos_encoding=True).pooler_output

        def encode_text(self, ids):
            return hf.get_text_features(input_ids=ids).pooler_output

    class Images(torch.utils.data.Dataset):
        classes = task.zeroshot.classnames

        def __init__(self):
            tf = model.image_transform(train=False)
            ds = wds.WebDataset(str(cifar10 / "test" / "0.tar"), shardshuffle=False).decode("pil")
            self.items = [(tf(s["png"]), int(s["cls"])) for s in ds]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    loader = torch.utils.data.DataLoader(Images(), batch_size=8)
    adapter = OpenClipLike()
    tokenizer = lambda texts: model.tokenize(texts)["input_ids"]  # noqa: E731
    names, templates = task.zeroshot.classnames, task.zeroshot.templates
    classifier = cb.zero_shot_classifier(adapter, tokenizer, names, templates, "cpu", amp=False)  # (E, C)
    logits, target = cb.run_classification(adapter, classifier, loader, "cpu", amp=False)  # (30, 10), x100
    assert target.tolist() == features["labels"].tolist()
    diff = (our_logits - logits / 100).abs().max().item()
    torch.testing.assert_close(classes["class_embeddings"], classifier.T, atol=1e-6, rtol=0)
    assert diff <= 1e-5, diff
    top2 = logits.topk(2, dim=1).values / 100
    assert (top2[:, 0] - top2[:, 1]).min() > 10 * diff  # no near-tie: equal accuracies are a real check
    # Its `accuracy` calls float() on a 1-element array, which numpy >= 2.3 refuses; a module-level `float` that
    # takes the element (what older numpy did) lets its own code run unchanged.
    monkeypatch.setattr(cb, "float", lambda x: builtins.float(getattr(x, "item", lambda: x)()), raising=False)
    theirs = cb.evaluate(adapter, loader, tokenizer, names, templates, "cpu", amp=False)
    assert ours.metrics["top1"] == pytest.approx(theirs["acc1"], abs=1e-12)
    assert ours.metrics["top5"] == pytest.approx(theirs["acc5"], abs=1e-12)
    assert ours.metrics["mean_per_class"] == pytest.approx(theirs["mean_per_class_recall"], abs=1e-12)
    print(f"\nCLIP_benchmark parity: max |logit diff| {diff:.2e} (cosines); {theirs}")


@pytest.mark.multiprocess
def test_two_process_ddp_equals_single_process(tmp_path, cifar10):
    base = [sys.executable, "-m", "mmbench", "run", "--model", "clip-tiny", "--task", "cifar10_zeroshot",
            "--no-progress", "--data-root", str(cifar10.parent), "--num-workers", "0", "--accelerator", "cpu",
            "--batch-size", "4"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for devices in ("1", "2"):
        out, cache = tmp_path / devices, tmp_path / f"cache{devices}"  # each run computes everything itself
        cmd = [*base, "--devices", devices, "--output", str(out), "--cache-dir", str(cache)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    one = json.loads(result_path(tmp_path / "1", "clip-tiny", "cifar10_zeroshot").read_text())
    two = json.loads(result_path(tmp_path / "2", "clip-tiny", "cifar10_zeroshot").read_text())
    assert two["provenance"]["device"] == "cpu x2" and one["provenance"]["device"] == "cpu x1"
    assert two["metrics"] == one["metrics"] and two["n_samples"] == one["n_samples"] == 30
    assert (
        two["details"]["cache"] == one["details"]["cache"] == {"image_embeddings": "miss", "class_embeddings": "miss"}
    )
    embeddings = [
        torch.load(next((tmp_path / f"cache{d}" / "zeroshot").rglob("*.pt")), weights_only=True)["class_embeddings"]
        for d in "12"
    ]
    assert torch.equal(*embeddings)


def test_imagenet_prompt_names_map_onto_clip_benchmarks_own_label_list(registry):
    """CLIP's ImageNet list names two classes 'missile' and two 'sunglasses': the published classnames.txt (the
    same list) must map by position, not trip the order check on the first of each pair."""
    names = registry.task("imagenet_zeroshot").zeroshot.classnames
    zeroshot.map_classnames(names, list(names), "prompts", "imagenet/classnames.txt")
    folders = [n.replace(" ", "_").upper() for n in names]  # another spelling of the same list: still by position
    zeroshot.map_classnames(names, folders, "prompts", "imagenet/classnames.txt")
    swapped = [names[1], names[0], *names[2:]]
    with pytest.raises(DataError, match=r"line 1 is 'goldfish', which is prompt class 2 of prompts"):
        zeroshot.map_classnames(names, swapped, "prompts", "imagenet/classnames.txt")
