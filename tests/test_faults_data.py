"""The fault catalogue, damaged and missing data and fine-tuning checkpoints (exit 3, 4; 5 for a checkpoint that
cannot be written): the error names the file (the shard, image, annotation or checkpoint), comes before any work
where a check can find it (no image decoded, no training step), and nothing already written changes; repaired data
are evaluated again. How entries are made and checked: `test_faults.py`."""

from __future__ import annotations

import functools
import shutil
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import PIL.Image
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from test_faults import (
    FLICKR,
    RTE,
    SHORT,
    TABLE,
    WORLD,
    Fault,
    build_world,
    check_fault,
    cmd,
    edit_result,
    params,
    run,
    world_result,
    write,
)

from mmbench.cli import main
from mmbench.results.store import read

SHARD = "data/flickr30k/test/0.tar"
FLICKR_RESULT = "out/runs/clip-tiny/flickr30k.json"
FINETUNE = "{w}/cache/finetune/clip-tiny/rte/"
VQA = ("--model", "clip-tiny", "--task", "vqav2", "--data-root", "{w}/v", "--limit", "8")


# --- making faults ---------------------------------------------------------------------------------------------------


def _members(shard: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(shard) as tar:
        return tar.getmembers()


def _cut_shard(where: str) -> Callable[[Path], None]:
    """Cut the Flickr30K test shard as an interrupted download would: in the middle of a member's data, or right
    after the last member's padded data (a whole number of 512-byte blocks, but no end-of-archive)."""

    def make(w: Path) -> None:
        shard = w / SHARD
        members = _members(shard)
        if where == "mid-member":
            at = members[5].offset_data + members[5].size // 2
            assert at % 512
        else:
            at = members[-1].offset_data + -(-members[-1].size // 512) * 512
        shard.write_bytes(shard.read_bytes()[:at])

    return make


def _garble_header(w: Path) -> None:
    """A header in the middle overwritten: the end of the file is intact, tarfile would stop there quietly."""
    shard = w / SHARD
    third = _members(shard)[2]
    data = bytearray(shard.read_bytes())
    data[third.offset : third.offset + 512] = b"\xff" * 512
    shard.write_bytes(bytes(data))


@functools.cache
def png_bomb() -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of 14000 x 14000 black pixels (196M, over twice PIL's default
    limit of 89M: an error, not a warning), 24 KB on disk and 25 MB decoded (600 MB as RGB)."""
    size = 14000
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\x00" * (1 + size // 8)) for _ in range(size)) + z.flush()  # filter byte + row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", size, size, 1, 0, 0, 0, 0)  # 1 bit per pixel, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _coco_with(ext: str, image: Callable[[], bytes]) -> Callable[[Path], None]:
    """A COCO dataset (the Flickr30K copy) whose first shard holds one sample, its image member `ext` = image()."""

    def make(w: Path) -> None:
        shutil.copytree(w / "data" / "flickr30k", w / "data" / "coco")
        with wds.TarWriter(str(w / "data" / "coco" / "test" / "0.tar")) as sink:
            sink.write({"__key__": "s0000000", ext: image(), "txt": "a caption"})

    return make


def _empty_split(w: Path) -> None:
    split = w / "data" / "flickr30k" / "test"
    for shard in split.glob("*.tar"):
        shard.unlink()
    tarfile.open(split / "0.tar", "w").close()  # a well-formed tar with no member
    (split / "nshards.txt").write_text("1\n")


def _karpathy_images_missing(w: Path) -> None:
    """Two of the six test images gone: 1000004.jpg is the first test image (four train images come first)."""
    for name in ("1000005.jpg", "1000007.jpg"):
        (w / "k" / "flickr30k" / "flickr30k-images" / name).unlink()


@contextmanager
def _no_image_decoded(w: Path) -> Iterator[None]:
    """The fault is found before any work: not one image is opened (every decode goes through `PIL.Image.open`)."""
    real, opened = PIL.Image.open, []

    def counting(*args, **kwargs):
        opened.append(args[0])
        return real(*args, **kwargs)

    PIL.Image.open = counting
    try:
        yield
    finally:
        PIL.Image.open = real
    assert not opened, f"{len(opened)} images decoded before the fault was found"


def _glue(w: Path) -> Path:
    """The world's synthetic RTE data, copied to `w/g/glue` (a dataset root of its own)."""
    generated = next((w / "cache" / "synthetic" / "rte").glob("glue-*"))
    return shutil.copytree(generated, w / "g" / "glue")


def _glue_with_bad_parquet(w: Path) -> None:
    (_glue(w) / "rte" / "validation-00000-of-00001.parquet").write_bytes(b"PAR1 not really")


def _glue_with_empty_validation(w: Path) -> None:
    path = _glue(w) / "rte" / "validation-00000-of-00001.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 0), path)  # the same columns, no row


def _vqa_without(rel: str) -> Callable[[Path], None]:
    """A synthetic VQAv2 dataset lacking one file or folder its run needs (test-dev2015 is predicted at the end)."""

    def make(w: Path) -> None:
        assert main(["data", "synth", "--task", "vqav2", "--out", f"{w}/v/vqav2", "--n", "6"]) == 0
        target = w / "v" / "vqav2" / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return make


def run_folder(w: Path) -> Path:
    (state,) = (w / "cache" / "finetune" / "clip-tiny" / "rte").glob("*/state.json")
    return state.parent


def cut_checkpoint(name: str) -> Callable[[Path], None]:
    """A checkpoint of the run folder cut in half, as a write cut short would leave it."""

    def make(w: Path) -> None:
        path = run_folder(w) / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return make


# --- what must hold afterwards ---------------------------------------------------------------------------------------


def _nothing_trained(task: str) -> Callable[[Path, str], None]:
    """No checkpoint of `task` besides the world's: the fault stopped the run before its first step (and no result
    was written: the runner finds any new file outside the cache)."""

    def check(w: Path, log: str) -> None:
        written = [p.relative_to(w) for p in (w / "cache" / "finetune").rglob("*") if p.suffix in (".ckpt", ".pt")]
        assert [p for p in written if f"/{task}/" in str(p) and not (WORLD[0] / p).exists()] == []

    return check


def _nothing_half_written(w: Path, log: str) -> None:
    """The run folder of the failed run (seed 1) holds no temporary and no partial checkpoint (the world's run folder
    and result are unchanged: the runner checks)."""
    folders = [p.parent for p in (w / "cache" / "finetune" / "clip-tiny" / "rte").glob("*/best.pt")]
    assert len(folders) == 2, folders  # the world's and this run's (best.pt is written before last.ckpt)
    new = [f for f in folders if not (f / "state.json").exists()]
    assert len(new) == 1 and sorted(p.name for p in new[0].iterdir()) == ["best.pt"]
    assert not [p for p in w.rglob("*") if p.name.endswith(".tmp")]


def _truncated_then_repaired(w: Path) -> None:
    """The first run on a truncated shard stops naming it and writes nothing; then the shard is fetched again (the
    same bytes as the world's, written now)."""
    good = (w / SHARD).read_bytes()
    kept = (w / FLICKR_RESULT).read_bytes()
    _cut_shard("mid-member")(w)
    assert main(run(*FLICKR)(w)) == 3
    assert (w / FLICKR_RESULT).read_bytes() == kept
    (w / SHARD).write_bytes(good)


def _evaluated_again(w: Path, log: str) -> None:
    res, before = read(w / FLICKR_RESULT), world_result("clip-tiny", "flickr30k")
    assert res.provenance["finished_at"] != before.provenance["finished_at"]  # run, not read back
    assert res.n_samples == before.n_samples == 12 and res.metrics == before.metrics


CATALOGUE = [
    # -- missing, corrupt or malformed data and result files: exit 3 ----------------------------------------------
    Fault(
        "missing dataset",
        run(*FLICKR, "--data-root", "{w}/nothing"),
        3,
        ("dataset not found at {w}/nothing/flickr30k", "nshards.txt", "--data-root"),
    ),
    Fault(
        "shard cut mid-member",
        run(*FLICKR),
        3,
        (f"{{w}}/{SHARD}: truncated shard: ", "not a whole number of 512-byte tar blocks"),
        make=_cut_shard("mid-member"),
        absent=("('",),  # no Python tuple in the message
        during=_no_image_decoded,
    ),
    Fault(
        "shard cut on a block boundary without end-of-archive",
        run(*FLICKR),
        3,
        (f"{{w}}/{SHARD}: truncated shard: no tar end-of-archive (two zero blocks) at its end",),
        make=_cut_shard("block boundary"),
        absent=("('",),
        during=_no_image_decoded,
    ),
    Fault(
        "shard with a garbled header mid-file",
        run(*FLICKR),
        3,
        (f"{{w}}/{SHARD}: truncated shard: the member stream stops after member 's0000000.webp' at byte 4096",),
        make=_garble_header,
        absent=("('",),
    ),
    Fault(
        "corrupt image in a shard",
        run("--model", "clip-tiny", "--task", "coco", "--data-root", "{w}/data"),
        3,
        ("{w}/data/coco/test/0.tar:s0000000.webp: cannot decode image",),
        make=_coco_with("webp", lambda: b"garbage"),
    ),
    Fault(
        "decompression bomb in a shard",
        run("--model", "clip-tiny", "--task", "coco", "--data-root", "{w}/data"),
        3,
        ("{w}/data/coco/test/0.tar:s0000000.png: refused as a possible decompression bomb",),
        make=_coco_with("png", png_bomb),
    ),
    Fault(
        "images missing from an annotation",
        run(*FLICKR, "--data-root", "{w}/k"),
        3,
        ("{w}/k/flickr30k/flickr30k-images/1000005.jpg: image file missing (2 of the 6 image files that split 'test'",),
        make=_karpathy_images_missing,
        during=_no_image_decoded,
    ),
    Fault(
        "VQAv2 without its test-dev2015 questions",
        run(*VQA, *SHORT),
        3,
        ("{w}/v/vqav2/v2_OpenEnded_mscoco_test-dev2015_questions.json: ", "missing"),
        make=_vqa_without("v2_OpenEnded_mscoco_test-dev2015_questions.json"),
        check=_nothing_trained("vqav2"),
    ),
    Fault(
        "VQAv2 without its test2015 images",
        run(*VQA, *SHORT),
        3,
        ("{w}/v/vqav2/test2015", "missing"),
        make=_vqa_without("test2015"),
        check=_nothing_trained("vqav2"),
    ),
    Fault(
        "wrong nshards.txt",
        run(*FLICKR),
        3,
        ("{w}/data/flickr30k/test/nshards.txt: says 3 shards", "1.tar, 2.tar missing"),
        make=write("data/flickr30k/test/nshards.txt", "3\n"),
    ),
    Fault(
        "empty split", run(*FLICKR), 3, ("the 'test' split of {w}/data/flickr30k has no samples",), make=_empty_split
    ),
    Fault(
        "empty GLUE split",
        run("--model", "clip-tiny", "--task", "rte", "--data-root", "{w}/g", "--limit", "16", *SHORT),
        3,
        ("the 'validation' split of {w}/g/glue", "has no samples"),
        make=_glue_with_empty_validation,
        check=_nothing_trained("rte"),
    ),
    Fault(
        "malformed annotation JSON",
        run(*FLICKR, "--data-root", "{w}/k"),
        3,
        ("{w}/k/flickr30k/dataset_flickr30k.json: not valid JSON",),
        make=write("k/flickr30k/dataset_flickr30k.json", '{"images": ['),
    ),
    Fault(
        "malformed parquet",
        run("--model", "clip-tiny", "--task", "rte", "--data-root", "{w}/g", "--limit", "16"),
        3,
        ("{w}/g/glue/rte/validation-00000-of-00001.parquet: not a readable parquet file",),
        make=_glue_with_bad_parquet,
    ),
    Fault(
        "corrupt result file in the table",
        cmd(*TABLE),
        3,
        ("{w}/out/runs/clip-tiny/flickr30k.json: not valid JSON",),
        make=write("out/runs/clip-tiny/flickr30k.json", '{"schema_version": 2, "model": '),
    ),
    Fault(
        "wrong-typed result in the table",
        cmd(*TABLE),
        3,
        ("{w}/out/runs/clip-tiny/flowers102.json: key 'n_samples': '40' is not a count",),
        make=edit_result("clip-tiny/flowers102.json", n_samples="40"),
    ),
    # -- fine-tuning checkpoints: exit 4 naming the file and the way out; exit 5 when one cannot be written -------
    Fault(
        "corrupt last.ckpt",
        run(*RTE, "--redo"),
        4,
        (FINETUNE, "/last.ckpt: unreadable fine-tuning checkpoint (", "run the same command with --fresh"),
        make=cut_checkpoint("last.ckpt"),
    ),
    Fault(
        "corrupt best.pt",
        run(*RTE, "--redo"),
        4,
        (FINETUNE, "/best.pt: unreadable fine-tuning checkpoint (", "run the same command with --fresh"),
        make=cut_checkpoint("best.pt"),
    ),
    Fault(
        "disk full when writing a fine-tuning checkpoint",
        run(*RTE, "--seed", "1"),  # a new run folder
        5,
        (FINETUNE, "/last.ckpt: cannot write", "File too large"),
        file_size_limit=500_000,  # best.pt is 340 KB, last.ckpt 800 KB
        check=_nothing_half_written,
    ),
    # -- repaired data: exit 0 ---------------------------------------------------------------------------------------
    Fault(
        "truncated shard repaired is evaluated again",
        run(*FLICKR),
        0,
        (),
        make=_truncated_then_repaired,
        absent=("up to date",),
        check=_evaluated_again,
        rewrites=(FLICKR_RESULT,),
    ),
]


@pytest.mark.parametrize("fault", params(CATALOGUE))
def test_fault(fault: Fault, world: Path, tmp_path: Path, monkeypatch, capsys, caplog):
    check_fault(fault, world, tmp_path, monkeypatch, capsys, caplog)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory)
