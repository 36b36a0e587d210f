"""Classification data: synthetic writers produce CLIP_benchmark's WebDataset layout and the image-folder layout,
the readers read them back (labels true of the image), and bad input is one line naming the shard and key."""

from __future__ import annotations

import os
import random
import shutil
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mmbench.data import open_reader, synthetic
from mmbench.data.image_folder import class_order
from mmbench.data.synthetic.classification import LABELS
from mmbench.data.synthetic.scene import COLOURS, SHAPES
from mmbench.errors import DataError

SMALL = {"data": {"synthetic": {"n_train": 12, "n_val": 0}}}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory, registry):
    """CIFAR10's synthetic variant (shape labels, png members), 12 train / 9 test samples, 4 per shard."""
    task = registry.task("cifar10", {"data": {"synthetic": {"n_train": 12, "samples_per_shard": 4}}})
    return synthetic.write(task, tmp_path_factory.mktemp("wds") / "cifar10", n=9, seed=2)


def test_wds_layout_is_clip_benchmarks(cifar):
    assert not (cifar / "dataset_type.txt").exists()  # absent = classification
    assert (cifar / "classnames.txt").read_text().split("\n")[:3] == list(SHAPES)
    assert (cifar / "train" / "nshards.txt").read_text().strip() == "3"
    assert (cifar / "test" / "nshards.txt").read_text().strip() == "3"
    with tarfile.open(cifar / "test" / "1.tar") as tar:
        names = tar.getnames()
        label = tar.extractfile("s0000004.cls").read()
    assert sorted(names) == [f"s{i:07d}.{ext}" for i in range(4, 8) for ext in ("cls", "png")]
    assert label == b"1"  # sample 4 of 3 balanced classes, as an ASCII integer


def test_reader_streams_records_with_labels(registry, cifar):
    reader = open_reader(registry.task("cifar10"), cifar)
    assert reader.format == "wds_classification" and reader.classnames() == list(SHAPES)
    recs = list(reader.samples("test"))
    assert [r["index"] for r in recs] == list(range(9)) and [r["label"] for r in recs] == [i % 3 for i in range(9)]
    assert [r["key"] for r in recs] == [f"s{i:07d}" for i in range(9)]
    assert all(r["image"].size == (64, 64) and r["image"].mode == "RGB" for r in recs)
    assert [r["index"] for r in reader.samples("train", limit=5, keep=lambda i: i % 2 == 0)] == [0, 2, 4]


def _label_holds(kind: str, y: int, name: str, scene) -> bool:
    obj, single = scene.objects[0], len(scene.objects) == 1
    return {
        "colour": obj.colour == name and single,
        "shape": obj.shape == name and single,
        "shape_colour": f"{obj.colour} {obj.shape}" == name and single,
        "size": obj.size == name and single,
        "background": scene.background == name,
        "row": obj.row == name and single,
        "cell": obj.cell == y and single,
        "count": scene.count() == y + 3,  # CLEVR: label = n - 3
        "count_small": scene.count() == y + 1,
    }[kind]


@pytest.mark.parametrize("kind", sorted(LABELS))
def test_every_label_is_true_of_its_scene(kind):
    k = LABELS[kind]
    for y, name in enumerate(k.classnames):
        for seed in range(3):
            scene = k.scene(random.Random(f"{kind}/{y}/{seed}"), y)
            assert _label_holds(kind, y, name, scene), (kind, y, scene)
    assert LABELS["count"].classnames[0] == "three"
    assert LABELS["shape_colour"].classnames[0] == f"{list(COLOURS)[0]} circle"


def test_both_layouts_hold_the_same_samples(registry, tmp_path):
    task = registry.task("food101", SMALL)  # image_folder by default, WebDataset as its alternative
    folder = synthetic.write(task, tmp_path / "f", n=8, seed=5)
    tars = synthetic.write(task, tmp_path / "w", fmt="wds_classification", n=8, seed=5)
    a, b = open_reader(task, folder), open_reader(task, tars)
    assert (a.format, b.format) == ("image_folder", "wds_classification")
    assert a.classnames() == list(COLOURS) == b.classnames()
    for split in ("train", "test"):
        ra, rb = list(a.samples(split)), list(b.samples(split))
        # the folder orders by (label, file): the same multiset of (label, pixels), both lossless
        key = sorted((r["label"], np.asarray(r["image"]).tobytes()) for r in ra)
        assert key == sorted((r["label"], np.asarray(r["image"]).tobytes()) for r in rb)
        assert [r["label"] for r in ra] == sorted(r["label"] for r in ra)
        assert ra[0]["key"] == "red/000000.png"


def test_has_split_looks_without_reading(registry, tmp_path):
    """Both layouts answer from the folder alone: present (even when damaged: `check` says how) or absent."""
    task = registry.task("food101", SMALL)
    folder = synthetic.write(task, tmp_path / "f", n=4, seed=5)
    tars = synthetic.write(task, tmp_path / "w", fmt="wds_classification", n=4, seed=5)
    (tars / "train" / "0.tar").write_bytes(b"not a tar")  # has_split reads nothing, so this cannot matter
    for root in (folder, tars):
        reader = open_reader(task, root)
        assert [reader.has_split(s) for s in ("train", "test", "val", "valid")] == [True, True, False, False]
    (tars / "valid").mkdir()
    assert open_reader(task, tars).has_split("valid")
    with pytest.raises(DataError, match=r"w/valid/nshards\.txt: missing"):
        open_reader(task, tars).check("valid")


def _folder(root, split, classes, per_class=1):
    for c in classes:
        for i in range(per_class):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(root / split / c / f"{i}.jpg")


def test_image_folder_class_order(registry, tmp_path):
    task = registry.task("ucf101")
    counts = [str(n) for n in range(3, 11)]  # CLEVR-style names: as strings "10" sorts before "3"
    _folder(tmp_path, "train", counts)
    _folder(tmp_path, "test", counts[:-1])  # a split that lacks a class must not shift the others
    (tmp_path / "test" / "notes.txt").write_text("not an image")
    reader = open_reader(task, tmp_path)
    assert reader.classnames() == counts and class_order(["b", "a", "B"]) == ["B", "a", "b"]
    assert [r["label"] for r in reader.samples("test")] == list(range(7))
    assert [r["key"] for r in reader.samples("test")][:2] == ["3/0.jpg", "4/0.jpg"]
    (tmp_path / "classnames.txt").write_text("\n".join(reversed(counts)) + "\n")
    reader = open_reader(task, tmp_path)  # an explicit list wins, read in file order
    assert reader.classnames()[0] == "10" and [r["label"] for r in reader.samples("test")][0] == 1


def test_fingerprints_follow_the_files(registry, cifar, tmp_path):
    root = shutil.copytree(cifar, tmp_path / "c")
    reader = open_reader(registry.task("cifar10"), root)
    before = reader.fingerprint("test")
    assert reader.fingerprint("test") == before and reader.fingerprint("train") != before
    os.utime(root / "test" / "2.tar", ns=(1, 1))
    assert reader.fingerprint("test") != before
    folder = synthetic.write(registry.task("food101", SMALL), tmp_path / "f", n=4, seed=0)
    f_reader = open_reader(registry.task("food101"), folder)
    f_before = f_reader.fingerprint("test")
    shutil.copy(folder / "test" / "red" / "000000.png", folder / "test" / "red" / "000099.png")
    assert open_reader(registry.task("food101"), folder).fingerprint("test") != f_before


# ---- bad input: one line naming the shard and the sample key -------------------------------------------------


def _broken(cifar, tmp_path, samples):
    root = shutil.copytree(cifar, tmp_path / "broken")
    with wds.TarWriter(str(root / "test" / "1.tar")) as sink:
        for s in samples:
            sink.write(s)
    return root


def _png(cifar) -> bytes:
    with tarfile.open(cifar / "test" / "0.tar") as tar:
        return tar.extractfile("s0000000.png").read()


@pytest.mark.parametrize(
    "member, message",
    [
        ({"png": b"not an image", "cls": b"1"}, r"test/1\.tar:s0000004\.png: cannot decode image"),
        ({"cls": b"1"}, r"test/1\.tar:s0000004: no image member"),
        ({"png": None, "cls": b"7"}, r"test/1\.tar:s0000004: label 7 is outside the 3 classes of classnames\.txt"),
        ({"png": None, "cls": b"-1"}, r"test/1\.tar:s0000004: label -1 is outside"),
        ({"png": None, "cls": b"cat"}, r"test/1\.tar:s0000004\.cls: expected an ASCII integer label"),
        ({"png": None}, r"test/1\.tar:s0000004: no \.cls member"),
    ],
)
def test_bad_sample_names_shard_and_key(registry, cifar, tmp_path, member, message):
    sample = {"__key__": "s0000004", **{k: (v if v is not None else _png(cifar)) for k, v in member.items()}}
    reader = open_reader(registry.task("cifar10"), _broken(cifar, tmp_path, [sample]))
    with pytest.raises(DataError, match=message) as err:
        list(reader.samples("test"))
    assert "\n" not in str(err.value)


def test_missing_or_miscounted_shards(registry, cifar, tmp_path):
    root = shutil.copytree(cifar, tmp_path / "shards")
    (root / "test" / "1.tar").unlink()
    with pytest.raises(DataError, match=r"test/nshards\.txt: says 3 shards but 1\.tar missing"):
        open_reader(registry.task("cifar10"), root)
    shutil.copy(root / "test" / "0.tar", root / "test" / "1.tar")
    shutil.copy(root / "test" / "0.tar", root / "test" / "3.tar")
    with pytest.raises(DataError, match=r"says 3 shards but .* holds 4 \(extra: \['3\.tar'\]\)"):
        open_reader(registry.task("cifar10"), root)
    (root / "test" / "3.tar").unlink()
    (root / "classnames.txt").unlink()
    with pytest.raises(DataError, match=r"classnames\.txt: missing"):
        open_reader(registry.task("cifar10"), root)


def test_unlisted_class_folder(registry, tmp_path):
    _folder(tmp_path, "test", ["a", "b"])
    (tmp_path / "classnames.txt").write_text("a\n")
    with pytest.raises(DataError, match=r"test/b: class folder 'b' is not in .*classnames\.txt"):
        open_reader(registry.task("ucf101"), tmp_path)
