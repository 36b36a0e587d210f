"""Real-shape synthetic data (`mmbench data synth --real-shape`): what the real readers read, in the published
layouts' split names, at real image sizes and encodings, with the real class counts; deterministic."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from mmbench import cli
from mmbench.data import open_reader, synthetic
from mmbench.data.synthetic.real_shape import COCO, FLICKR, MEMES, PHOTOS

N = 4


def _write(registry, tmp_path: Path, task: str, fmt: str | None = None, n: int = N) -> Path:
    return synthetic.write(registry.task(task), tmp_path / task, fmt=fmt, n=n, seed=1, real_shape=True)


def _read(registry, root: Path, task: str, split: str) -> list[dict]:
    return list(open_reader(registry.task(task), root).samples(split))


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_vqa_official_split_names_and_coco_sizes(registry, tmp_path):
    root = _write(registry, tmp_path, "vqav2")
    for split in ("train2014", "val2014", "test2015", "test-dev2015"):
        assert (root / f"v2_OpenEnded_mscoco_{split}_questions.json").is_file()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test2015", "train2014", "val2014"]
    for split in ("train2014", "val2014"):
        records = _read(registry, root, "vqav2", split)
        assert len(records) == N and all(len(r["answers"]) == 10 for r in records)
        assert all(r["image"].size in COCO for r in records)
        assert (root / split / f"COCO_{split}_{records[0]['question_id'] // 1000:012d}.jpg").read_bytes()[
            :2
        ] == b"\xff\xd8"
    test, dev = _read(registry, root, "vqav2", "test2015"), _read(registry, root, "vqav2", "test-dev2015")
    assert len(test) == N and 0 < len(dev) < N  # test-dev: a subset of test2015, its images in test2015/
    assert {r["question_id"] for r in dev} < {r["question_id"] for r in test}
    sizes = {
        r["image"].size for split in ("train2014", "val2014", "test2015") for r in _read(registry, root, "vqav2", split)
    }
    assert any(w > h for w, h in sizes) or any(w < h for w, h in sizes)  # not the scene world's squares


def test_snli_ve_and_hateful_memes_layouts(registry, tmp_path):
    snli = _write(registry, tmp_path, "snli_ve")
    for split in ("train", "dev", "test"):
        records = _read(registry, snli, "snli_ve", split)
        assert len(records) == N and all(r["image"].size in FLICKR and r["label"] is not None for r in records)
    memes = _write(registry, tmp_path, "hateful_memes")
    for split in ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen"):
        records = _read(registry, memes, "hateful_memes", split)
        assert len(records) == N and all(r["image"].size in MEMES for r in records)
        assert all((r["label"] is None) == split.startswith("test") for r in records)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in (memes / "img").iterdir())


@pytest.mark.parametrize(
    ("task", "classes", "size", "mode_ext"),
    [("imagenet", 1000, None, None), ("cifar100", 100, (32, 32), "png"), ("country211", 211, None, None)],
)
def test_wds_classification_real_class_counts_and_only_the_published_splits(
    registry, tmp_path, task, classes, size, mode_ext
):
    root = _write(registry, tmp_path, task)
    reader = open_reader(registry.task(task), root)
    assert len(reader.classnames()) == classes
    # The published clip-benchmark repos hold train and test only: no val split, whatever the task asks for.
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test", "train"]
    for split in ("train", "test"):
        records = list(reader.samples(split))
        assert [r["label"] for r in records] == [i % classes for i in range(N)]
        assert all(r["image"].size == size if size else r["image"].size in PHOTOS for r in records)
    if mode_ext:
        with tarfile.open(root / "test" / "0.tar") as tar:
            assert any(name.endswith(f".{mode_ext}") for name in tar.getnames())


def test_greyscale_and_image_folder(registry, tmp_path):
    mnist = _write(registry, tmp_path, "mnist")
    with tarfile.open(mnist / "train" / "0.tar") as tar:
        png = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png"))
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(png)).mode == "L" and Image.open(BytesIO(png)).size == (28, 28)
    assert all(r["image"].mode == "RGB" for r in _read(registry, mnist, "mnist", "test"))  # the reader converts
    food = _write(registry, tmp_path, "food101")
    reader = open_reader(registry.task("food101"), food)
    assert reader.format == "image_folder" and len(reader.classnames()) == 101
    assert len(list((food / "train").iterdir())) == 101  # every class folder, as in the converted release
    assert [r["label"] for r in reader.samples("test")] == list(range(N))


def test_retrieval_both_formats(registry, tmp_path):
    wds = _write(registry, tmp_path, "flickr30k")
    records = _read(registry, wds, "flickr30k", "test")
    assert len(records) == N and all(len(r["captions"]) == 5 and r["image"].size in FLICKR for r in records)
    kp = synthetic.write(registry.task("coco"), tmp_path / "coco_kp", fmt="karpathy", n=N, seed=1, real_shape=True)
    reader = open_reader(registry.task("coco"), kp)
    assert reader.format == "karpathy"
    records = list(reader.samples("test"))
    assert len(records) == N and all(r["image"].size in COCO for r in records)
    assert any(len(r["captions"]) > 5 for r in records)  # COCO images with 6-7 captions (the reader keeps 5 later)
    assert (kp / "train2014").is_dir() and (kp / "val2014").is_dir()


def test_glue_split_names_and_long_texts(registry, tmp_path):
    from mmbench.models.tokenizers import tiny_wordpiece

    root = _write(registry, tmp_path, "mnli", n=N)
    names = sorted(p.name.split("-")[0] for p in (root / "mnli").iterdir())
    assert names == ["test_matched", "test_mismatched", "train", "validation_matched", "validation_mismatched"]
    rows = _read(registry, root, "mnli", "validation_mismatched")
    assert len(rows) == N and all(r["label"] in (0, 1, 2) for r in rows)
    lengths = [len(tiny_wordpiece(4096)(r["text"])["input_ids"]) for r in rows]
    assert lengths[1] > 512 and lengths[0] < 77  # row 1 is past FLAVA's 512 positions; short rows stay short


def test_deterministic_and_seeded(registry, tmp_path):
    a = _digest(_write(registry, tmp_path / "a", "hateful_memes", n=2))
    b = _digest(_write(registry, tmp_path / "b", "hateful_memes", n=2))
    other = synthetic.write(registry.task("hateful_memes"), tmp_path / "c", n=2, seed=2, real_shape=True)
    assert a == b and a != _digest(other)


def test_cli_flag(registry, tmp_path, capsys):
    out = tmp_path / "cifar10"
    assert cli.main(["data", "synth", "--task", "cifar10", "--out", str(out), "--n", "3", "--real-shape"]) == 0
    assert "real shape" in capsys.readouterr().out
    assert len(_read(registry, out, "cifar10", "train")) == 3 and (out / "SYNTHETIC.json").is_file()
    assert '"real_shape": true' in (out / "SYNTHETIC.json").read_text()
