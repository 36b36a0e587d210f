"""Synthetic writers produce the real on-disk formats; readers read them back; bad input names file and key."""

from __future__ import annotations

import json
import random
import re
import tarfile

import numpy as np
import pytest
import webdataset as wds

from mmbench.data import dataset_root, open_reader, synthetic
from mmbench.data.synthetic.scene import captions, number_word, render, sample_scene
from mmbench.errors import DataError


@pytest.fixture(scope="module")
def flickr_wds(tmp_path_factory, registry):
    return synthetic.write(registry.task("flickr30k"), tmp_path_factory.mktemp("wds") / "flickr30k", n=10, seed=3)


@pytest.fixture(scope="module")
def flickr_karpathy(tmp_path_factory, registry):
    task = registry.task("flickr30k")
    return synthetic.write(task, tmp_path_factory.mktemp("kp") / "flickr30k", fmt="karpathy", n=10, seed=3)


def test_wds_layout_is_clip_benchmarks(flickr_wds):
    assert (flickr_wds / "dataset_type.txt").read_text().strip() == "retrieval"
    assert (flickr_wds / "test" / "nshards.txt").read_text().strip() == "1"
    with tarfile.open(flickr_wds / "test" / "0.tar") as tar:
        names = tar.getnames()
    assert sorted(names[:2]) == ["s0000000.txt", "s0000000.webp"]
    assert all(re.fullmatch(r"s\d{7}\.(webp|txt)", n) for n in names) and len(names) == 20


def test_synthetic_is_deterministic(registry, tmp_path, flickr_wds):
    again = synthetic.write(registry.task("flickr30k"), tmp_path / "again", n=10, seed=3)
    other = synthetic.write(registry.task("flickr30k"), tmp_path / "other", n=10, seed=4)

    def read(root):
        return [
            (r["captions"], np.asarray(r["image"]))
            for r in open_reader(registry.task("flickr30k"), root).samples("test")
        ]

    a, b, c = read(flickr_wds), read(again), read(other)
    assert all(x[0] == y[0] and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert [x[0] for x in a] != [x[0] for x in c]


def test_both_readers_see_the_same_content(registry, flickr_wds, flickr_karpathy):
    task = registry.task("flickr30k")
    wds_reader, kp_reader = open_reader(task, flickr_wds), open_reader(task, flickr_karpathy)
    assert (wds_reader.format, kp_reader.format) == ("wds_retrieval", "karpathy")
    a, b = list(wds_reader.samples("test")), list(kp_reader.samples("test"))
    assert [r["index"] for r in b] == list(range(10))  # train images filtered out, re-indexed
    assert [r["captions"] for r in a] == [r["captions"] for r in b]
    for x, y in zip(a, b):  # lossless webp vs JPEG q95 of the same render
        diff = np.abs(np.asarray(x["image"], dtype=float) - np.asarray(y["image"], dtype=float)).mean()
        assert diff < 4.0


def test_coco_karpathy_keeps_first_five_captions_in_protocol(registry, tmp_path):
    task = registry.task("coco")
    root = synthetic.write(task, tmp_path / "coco", fmt="karpathy", n=9, seed=0)
    data = json.loads((root / "dataset_coco.json").read_text())
    test = [im for im in data["images"] if im["split"] == "test"]
    assert {im["filepath"] for im in test} == {"val2014"} and all("cocoid" in im for im in test)
    assert max(len(im["sentences"]) for im in test) > 5  # the 6-7 caption images COCO really has
    recs = list(open_reader(task, root).samples("test"))
    assert [len(r["captions"]) for r in recs] == [len(im["sentences"]) for im in test]
    assert task.retrieval.captions_per_image == 5


def test_limit_and_keep(registry, flickr_wds):
    reader = open_reader(registry.task("flickr30k"), flickr_wds)
    assert [r["index"] for r in reader.samples("test", limit=4)] == [0, 1, 2, 3]
    assert [r["index"] for r in reader.samples("test", keep=lambda i: i % 3 == 1)] == [1, 4, 7]


def test_scene_captions_are_true():
    for seed in range(30):
        rng = random.Random(seed)
        scene = sample_scene(rng)
        caps = captions(scene, rng, 5)
        assert len(set(caps)) == 5
        n = len(scene.objects)
        assert caps[1].startswith(f"{number_word(n)} shape")
        img = render(scene, 48)
        assert img.size == (48, 48) and len(set(img.getdata())) > 1


# ---- bad input ---------------------------------------------------------------------------------------------


def test_missing_dataset_names_expected_files(registry, tmp_path):
    task = registry.task("flickr30k")
    with pytest.raises(DataError) as err:
        open_reader(task, dataset_root(task, tmp_path))
    msg = str(err.value)
    assert f"{tmp_path}/flickr30k/test/nshards.txt" in msg and "dataset_flickr30k.json" in msg
    assert "clip-benchmark/wds_flickr30k" in msg and "--data synthetic" in msg


def _write_shard(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


def test_corrupt_image_names_shard_and_key(registry, tmp_path, flickr_wds):
    import shutil

    root = tmp_path / "corrupt"
    shutil.copytree(flickr_wds, root)
    _write_shard(root / "test" / "0.tar", [{"__key__": "s0000000", "webp": b"not an image", "txt": "a caption"}])
    reader = open_reader(registry.task("flickr30k"), root)
    with pytest.raises(DataError, match=r"test/0\.tar:s0000000\.webp: cannot decode image"):
        list(reader.samples("test"))


def test_nshards_disagreeing_with_files(registry, tmp_path, flickr_wds):
    import shutil

    root = tmp_path / "bad-nshards"
    shutil.copytree(flickr_wds, root)
    (root / "test" / "nshards.txt").write_text("2\n")
    with pytest.raises(DataError, match=r"nshards.txt: says 2 shards but 1.tar missing"):
        open_reader(registry.task("flickr30k"), root)
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "test" / "7.tar").write_bytes((root / "test" / "0.tar").read_bytes())
    with pytest.raises(DataError, match=r"says 1 shards but .* holds 2 \(extra: \['7.tar'\]\)"):
        open_reader(registry.task("flickr30k"), root)


def test_sample_without_captions(registry, tmp_path, flickr_wds):
    import shutil

    root = tmp_path / "nocap"
    shutil.copytree(flickr_wds, root)
    img = flickr_wds / "test" / "0.tar"
    with tarfile.open(img) as tar:
        webp = tar.extractfile("s0000000.webp").read()
    _write_shard(root / "test" / "0.tar", [{"__key__": "s0000000", "webp": webp}])
    with pytest.raises(DataError, match=r"0\.tar:s0000000: no \.txt member"):
        list(open_reader(registry.task("flickr30k"), root).samples("test"))


def test_malformed_karpathy_names_file_and_key(registry, tmp_path, flickr_karpathy):
    import shutil

    root = tmp_path / "kp"
    shutil.copytree(flickr_karpathy, root)
    ann = root / "dataset_flickr30k.json"
    data = json.loads(ann.read_text())
    del data["images"][5]["sentences"]
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"dataset_flickr30k.json: images\[5\]: missing key 'sentences'"):
        list(open_reader(registry.task("flickr30k"), root).samples("test"))
    ann.write_text("{not json")
    with pytest.raises(DataError, match=r"dataset_flickr30k.json: not valid JSON"):
        list(open_reader(registry.task("flickr30k"), root).samples("test"))


def test_missing_karpathy_image_names_path(registry, tmp_path, flickr_karpathy):
    import shutil

    root = tmp_path / "kp2"
    shutil.copytree(flickr_karpathy, root)
    victim = sorted((root / "flickr30k-images").iterdir())[-1]
    reader = open_reader(registry.task("flickr30k"), root)
    victim.unlink()  # after the check: reading names it
    with pytest.raises(DataError, match=re.escape(f"{victim}: image file not found")):
        list(reader.samples("test"))
    # before the first step: the check names the first missing image and how many are missing
    with pytest.raises(DataError, match=re.escape(f"{victim}: image file missing (1 of the 10 image files")):
        open_reader(registry.task("flickr30k"), root)
