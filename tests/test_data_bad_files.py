"""Damaged data files are one clear error naming the file, never a silently smaller dataset: truncated WebDataset
shards (cut mid-member, cut on a block boundary, a garbled header mid-file) and decompression-bomb images."""

from __future__ import annotations

import io
import shutil
import tarfile

import pytest
from PIL import Image

from mmbench.data import decode_image, open_reader, synthetic
from mmbench.errors import DataError


@pytest.fixture(scope="module")
def cifar(tmp_path_factory, registry):
    """12 train / 8 test samples, 4 per shard (png + cls members)."""
    task = registry.task("cifar10", {"data": {"synthetic": {"n_train": 12, "samples_per_shard": 4}}})
    return synthetic.write(task, tmp_path_factory.mktemp("wds") / "cifar10", n=8, seed=2)


def _members(shard):
    with tarfile.open(shard) as tar:
        return tar.getmembers()


def _cut(path, at):
    data = path.read_bytes()
    path.write_bytes(data[:at])


def _damaged(registry, cifar, tmp_path, damage):
    """A copy of the dataset with test/1.tar damaged; returns (task, root, shard, reader opened before)."""
    root = shutil.copytree(cifar, tmp_path / "c")
    task = registry.task("cifar10")
    before = open_reader(task, root)
    shard = root / "test" / "1.tar"
    damage(shard)
    return task, root, shard, before


def _one_line(msg):
    assert "\n" not in msg and "('" not in msg and "@ " not in msg  # no Python tuple, no library decoration
    return msg


def test_shard_cut_mid_member(registry, cifar, tmp_path):
    members = _members(cifar / "test" / "1.tar")
    at = members[5].offset_data + members[5].size // 2
    assert at % 512
    task, root, shard, before = _damaged(registry, cifar, tmp_path, lambda p: _cut(p, at))
    with pytest.raises(DataError) as err:
        open_reader(task, root)  # the check, before any work
    assert _one_line(str(err.value)).startswith(f"{shard}: truncated shard: ")
    assert "not a whole number of 512-byte tar blocks" in str(err.value)
    with pytest.raises(DataError) as err:
        list(before.samples("test"))  # reading it: the member that runs past the end is named
    assert _one_line(str(err.value)).startswith(f"{shard}: truncated shard: member {members[5].name!r} needs ")


def test_shard_cut_on_a_block_boundary_without_end_of_archive(registry, cifar, tmp_path):
    last = _members(cifar / "test" / "1.tar")[-1]
    at = last.offset_data + -(-last.size // 512) * 512  # right after the last member: no end-of-archive
    task, root, shard, before = _damaged(registry, cifar, tmp_path, lambda p: _cut(p, at))
    with pytest.raises(DataError) as err:
        open_reader(task, root)
    assert _one_line(str(err.value)) == (
        f"{shard}: truncated shard: no tar end-of-archive (two zero blocks) at its end "
        "(an interrupted download or copy? fetch the shard again)"
    )
    with pytest.raises(DataError) as err:
        list(before.samples("test"))
    assert _one_line(str(err.value)).startswith(
        f"{shard}: truncated shard: no complete tar end-of-archive after member {last.name!r} (the file stops at "
    )


def test_shard_cut_between_members(registry, cifar, tmp_path):
    """Cut on the header of a middle member: the member stream stops early."""
    members = _members(cifar / "test" / "1.tar")
    task, root, shard, before = _damaged(registry, cifar, tmp_path, lambda p: _cut(p, members[4].offset))
    with pytest.raises(DataError, match="truncated shard"):
        open_reader(task, root)
    with pytest.raises(DataError) as err:
        list(before.samples("test"))
    assert f"after member {members[3].name!r}" in _one_line(str(err.value))


def test_garbled_header_mid_shard(registry, cifar, tmp_path):
    """The end of the file is intact (the cheap check passes) but a header in the middle is garbage: tarfile would
    stop there quietly; the scan names the shard and where the member stream stops."""
    members = _members(cifar / "test" / "1.tar")

    def garble(path):
        data = bytearray(path.read_bytes())
        data[members[2].offset : members[2].offset + 512] = b"\xff" * 512
        path.write_bytes(bytes(data))

    task, root, shard, _ = _damaged(registry, cifar, tmp_path, garble)
    reader = open_reader(task, root)
    with pytest.raises(DataError) as err:
        list(reader.samples("test"))
    assert _one_line(str(err.value)).startswith(
        f"{shard}: truncated shard: the member stream stops after member {members[1].name!r} at byte "
        f"{members[2].offset} of "
    )


def test_intact_shards_read_every_sample(registry, cifar):
    """The checks above are not tripped by good shards (tarfile pads archives to 10 KB records)."""
    reader = open_reader(registry.task("cifar10"), cifar)
    assert [r["index"] for r in reader.samples("test")] == list(range(8))
    assert len(reader.random_access("train")) == 12


def test_limit_scans_only_the_shards_it_needs(registry, cifar, tmp_path):
    from mmbench.data.webdataset import WdsClassificationReader

    task, root, _, _ = _damaged(registry, cifar, tmp_path, lambda p: _cut(p, 1024 + 7))
    reader = WdsClassificationReader(root, task)  # unchecked (open_reader's check would refuse the split)
    assert [r["index"] for r in reader.samples("test", limit=4)] == [0, 1, 2, 3]  # shard 0 only
    with pytest.raises(DataError, match=r"1\.tar: truncated"):
        reader.random_access("test", limit=5)


# ---- decompression bombs -------------------------------------------------------------------------------------


def _png(size):
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_decompression_bomb_is_an_error_naming_the_image(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own limit, lowered so small images trip it
    assert decode_image(_png((30, 30)), "small.png").size == (30, 30)
    with pytest.raises(DataError) as err:
        decode_image(_png((64, 64)), "shard.tar:s0000001.png")  # 4096 px: over twice the limit (PIL errors)
    assert str(err.value).startswith("shard.tar:s0000001.png: refused as a possible decompression bomb (Image size")
    with pytest.raises(DataError) as err:
        decode_image(_png((40, 30)), "img/42953.png")  # 1200 px: over the limit (PIL only warns)
    assert str(err.value).startswith("img/42953.png: refused as a possible decompression bomb (Image size (1200")


def test_decompression_bomb_in_a_dataset_names_the_file(registry, tmp_path, monkeypatch):
    task = registry.task("ucf101")
    for i, size in enumerate([(8, 8), (64, 64)]):
        (tmp_path / "test" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "test" / "a" / f"{i}.png").write_bytes(_png(size))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match=rf"^{tmp_path}/test/a/1\.png: refused as a possible decompression bomb"):
        list(open_reader(task, tmp_path).samples("test"))
