"""Every reader at real scale: random access equal to the streamed records, nothing decoded before a record is
accessed (and then in the loader worker), a compact index, a check that finds every missing file before any work,
and a fingerprint that follows exactly the files a split reads."""

from __future__ import annotations

import io
import json
import os
import shutil
import tracemalloc

import numpy as np
import PIL.Image
import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from mmbench.data import open_reader, synthetic
from mmbench.errors import ConfigError, DataError
from mmbench.lit.finetune_data import Table, item_fn, training_table

SMALL = {"n_train": 12}
# format -> (task, synthetic options, writer format, n, the split read, a file the split does not read)
CASES = {
    "vqa": ("vqav2", SMALL, None, 6, "train2014", "v2_mscoco_val2014_annotations.json"),
    "snli_ve": ("snli_ve", SMALL, None, 6, "train", "snli_ve_dev.jsonl"),
    "hateful_memes": ("hateful_memes", SMALL, None, 6, "train", "dev_seen.jsonl"),
    "image_folder": ("food101", {"n_train": 12, "n_val": 0}, None, 6, "train", "test/red/000000.png"),
    "karpathy": ("flickr30k", {}, "karpathy", 6, "test", "SYNTHETIC.json"),
    "glue": ("mnli", SMALL, None, 6, "train", "mnli/validation_matched-00000-of-00001.parquet"),
    "wds_classification": ("cifar10", {**SMALL, "samples_per_shard": 5}, None, 6, "train", "test/0.tar"),
    "wds_retrieval": ("flickr30k", {"samples_per_shard": 4}, None, 10, "test", "SYNTHETIC.json"),
}


def _task(registry, fmt):
    name, opts = CASES[fmt][:2]
    return registry.task(name, overrides={"data": {"synthetic": opts}})


@pytest.fixture(scope="module")
def roots(tmp_path_factory, registry):
    base = tmp_path_factory.mktemp("formats")
    out = {}
    for fmt, (_, _, writer, n, *_) in CASES.items():
        out[fmt] = synthetic.write(_task(registry, fmt), base / fmt, fmt=writer, n=n, seed=4)
    return out


def _comparable(rec):
    """A record with its image as (size, mode, pixel bytes): PIL images do not compare by value."""
    out = dict(rec)
    if rec.get("image") is not None:
        out["image"] = (rec["image"].size, rec["image"].mode, rec["image"].tobytes())
    return out


class OpenCount:
    """Counts `PIL.Image.open` calls (the real function runs): every decode goes through it."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = PIL.Image.open

        def counting(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(PIL.Image, "open", counting)


# ---- random access = the streamed records --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(CASES))
def test_random_access_items_equal_the_streamed_records(registry, roots, fmt):
    reader = open_reader(_task(registry, fmt), roots[fmt])
    assert reader.format == fmt
    split = CASES[fmt][4]
    streamed = [_comparable(r) for r in reader.samples(split)]
    table = reader.random_access(split)
    assert len(table) == len(streamed) > 0
    assert [_comparable(table[i]) for i in range(len(table))] == streamed
    assert [r["index"] for r in streamed] == list(range(len(streamed)))
    assert _comparable(table[-1]) == streamed[-1]
    assert [_comparable(r) for r in reader.random_access(split, limit=3)] == streamed[:3]
    with pytest.raises(IndexError):
        table[len(table)]


@pytest.mark.parametrize("fmt", ["wds_classification", "wds_retrieval"])
def test_tar_index_reads_what_the_webdataset_library_reads(registry, roots, fmt):
    """The member-offset index against an independent reader of the same shards: webdataset itself."""
    reader = open_reader(_task(registry, fmt), roots[fmt])
    split = CASES[fmt][4]
    shards = [str(p) for p in reader.shards(split)]
    assert len(shards) > 1  # samples cross shard boundaries
    library = list(wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples()))
    table = reader.random_access(split)
    assert [table[i]["key"] for i in range(len(table))] == [s["__key__"] for s in library]
    for i in (0, 4, 5, len(library) - 1):  # first, either side of a shard boundary, last
        image = next(s[ext] for ext in ("webp", "png", "jpg") if ext in (s := library[i]))
        assert table[i]["image"].tobytes() == PIL.Image.open(io.BytesIO(image)).convert("RGB").tobytes()
        if fmt == "wds_classification":
            assert table[i]["label"] == int(library[i]["cls"])
        else:
            assert table[i]["captions"] == library[i]["txt"].decode().split("\n")


# ---- laziness ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["vqa", "snli_ve", "wds_classification"])
def test_building_the_training_table_decodes_no_image(registry, roots, fmt, monkeypatch):
    reader = open_reader(_task(registry, fmt), roots[fmt])
    opened = OpenCount(monkeypatch)
    table = training_table(reader, CASES[fmt][4], None)
    assert len(table) >= 6 and opened.calls == 0
    rec = table[3]
    assert rec["index"] == 3 and rec["image"].mode == "RGB" and opened.calls == 1


def test_loader_workers_decode_the_images(registry, roots, monkeypatch):
    """The parent builds the table and the loader; images are decoded only in the worker processes."""
    import torchvision.transforms as T

    reader = open_reader(_task(registry, "snli_ve"), roots["snli_ve"])
    opened = OpenCount(monkeypatch)
    table = Table(training_table(reader, "train", None), item_fn("classification", "pair", "train", T.ToTensor()))
    loader = DataLoader(table, batch_size=4, num_workers=2, collate_fn=lambda items: items)
    items = [it for batch in loader for it in batch]
    assert [it["index"] for it in items] == list(range(12))
    assert all(it["pixel_values"].shape == (3, 64, 64) for it in items)
    assert opened.calls == 0  # every decode happened in a worker


def test_a_reader_without_random_access_cannot_be_fine_tuned_on(registry, roots):
    reader = open_reader(_task(registry, "snli_ve"), roots["snli_ve"])
    reader.random_access = lambda split, limit=None: None  # a third-party reader that only streams
    with pytest.raises(ConfigError, match=r"'snli_ve' reader offers no random access"):
        training_table(reader, "train", None)


def test_index_holds_a_few_hundred_bytes_per_question(registry, roots, tmp_path):
    """5,000 VQA questions (10 answers each) cost < 300 bytes each once indexed; as dicts they took ~3 KB."""
    root = shutil.copytree(roots["vqa"], tmp_path / "vqa")
    questions = json.loads((root / "v2_OpenEnded_mscoco_train2014_questions.json").read_text())
    annotations = json.loads((root / "v2_mscoco_train2014_annotations.json").read_text())
    qs, anns = questions["questions"], annotations["annotations"]
    n = 5_000
    questions["questions"] = [{**qs[i % len(qs)], "question_id": i} for i in range(n)]
    annotations["annotations"] = [{**anns[i % len(anns)], "question_id": i} for i in range(n)]
    (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps(questions))
    (root / "v2_mscoco_train2014_annotations.json").write_text(json.dumps(annotations))
    del questions, annotations, qs, anns
    reader = open_reader(_task(registry, "vqa"), root)
    tracemalloc.start()
    try:
        table = reader.random_access("train2014")
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(table) == n and table[n - 1]["question_id"] == n - 1 and len(table[n - 1]["answers"]) == 10
    assert held / n < 300, f"{held / n:.0f} bytes per question"


# ---- check: every file before any work ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["vqa", "snli_ve", "hateful_memes", "karpathy"])
def test_check_names_the_first_missing_image_and_counts_them(registry, roots, fmt, tmp_path):
    root = shutil.copytree(roots[fmt], tmp_path / fmt)
    task, split = _task(registry, fmt), CASES[fmt][4]
    reader = open_reader(task, root)
    reader.check(split)
    images = {
        "vqa": lambda: [reader.image_path(split, i) for i in dict.fromkeys(reader._index(split).image_id)],
        "snli_ve": lambda: [root / p for p in reader._index(split).image.values],
        "hateful_memes": lambda: [root / p for p in reader._index(split).image.values],
        "karpathy": lambda: [reader.image_dir / p for p in reader._image_relpaths(split)],
    }[fmt]()
    assert len(images) >= 3
    images[2].unlink()
    images[1].unlink()
    with pytest.raises(DataError) as err:
        open_reader(task, root).check(split)
    msg = str(err.value)
    assert msg.startswith(f"{images[1]}: image file missing (2 of the {len(images)} image files that split {split!r}")
    assert "\n" not in msg


def test_missing_files_lists_each_folder_once(tmp_path):
    from mmbench.data.columns import missing_files

    folders = [tmp_path / "a", tmp_path / "b"]
    for f in folders:
        f.mkdir()
    paths = [str(f / f"{i:04d}.jpg") for i in range(300) for f in folders]
    for p in paths:
        open(p, "wb").close()
    assert missing_files(paths) == (None, 0, 600)
    os.unlink(paths[501])
    os.unlink(paths[7])
    assert missing_files(paths) == (paths[7], 2, 600)
    assert missing_files([*paths[:3], str(tmp_path / "no-such-folder" / "x.jpg")])[:2] == (
        str(tmp_path / "no-such-folder" / "x.jpg"),
        1,
    )


# ---- fingerprint: the files the split reads, and nothing else --------------------------------------------------


def _split_files(reader, fmt, split, root):
    """A file the split reads (touched to change the fingerprint)."""
    if fmt in ("wds_classification", "wds_retrieval"):
        return reader.shards(split)[-1]
    if fmt == "glue":
        return reader.files(split)[0]
    if fmt == "image_folder":
        return reader.files(split)[-1][0]
    if fmt == "vqa":
        return reader.image_path(split, reader._index(split).image_id[-1])
    if fmt == "karpathy":
        return reader.image_dir / reader._image_relpaths(split)[-1]
    return root / reader._index(split).image.values[-1]


@pytest.mark.parametrize("fmt", list(CASES))
def test_fingerprint_follows_the_files_of_the_split(registry, roots, fmt, tmp_path):
    root = shutil.copytree(roots[fmt], tmp_path / fmt)
    task, split, other = _task(registry, fmt), CASES[fmt][4], CASES[fmt][5]

    def fp():
        return open_reader(task, root).fingerprint(split)

    before = fp()
    assert before.startswith("sha256:") and fp() == before
    moved = shutil.copytree(root, tmp_path / "moved")  # copy2 keeps mtimes: where the data lives is not in it
    assert open_reader(task, moved).fingerprint(split) == before
    os.utime(root / other, ns=(1, 1))  # a file of another split: not read
    (root / "notes.txt").write_text("unrelated")
    assert fp() == before
    victim = _split_files(open_reader(task, root), fmt, split, root)
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched
    touched = fp()
    assert touched != before
    data = victim.read_bytes()
    tmp = victim.with_name(victim.name + ".new")
    tmp.write_bytes(data + b"\0" * 512)
    os.replace(tmp, victim)  # replaced by a different file
    assert fp() not in (before, touched)


def test_annotation_files_are_in_the_fingerprint(registry, roots, tmp_path):
    root = shutil.copytree(roots["vqa"], tmp_path / "vqa")
    task = _task(registry, "vqa")
    before = open_reader(task, root).fingerprint("train2014")
    ann = root / "v2_mscoco_train2014_annotations.json"
    os.utime(ann, ns=(1, 1))
    assert open_reader(task, root).fingerprint("train2014") != before


def test_eval_stream_reads_only_its_part(registry, roots, monkeypatch):
    """An IndexedStream worker decodes only the samples of its own blocks."""
    from mmbench.data.base import IndexedStream

    reader = open_reader(_task(registry, "wds_classification"), roots["wds_classification"])
    stream = IndexedStream(reader, "train", lambda r: r["index"], block_size=2)
    stream.set_partition(1, 3)
    opened = OpenCount(monkeypatch)
    assert list(stream) == [2, 3, 8, 9]
    assert opened.calls == 4
    assert torch.equal(torch.tensor(sorted(i for r in range(3) for i in _part(stream, r))), torch.arange(12))


def _part(stream, rank):
    stream.set_partition(rank, 3)
    return list(stream)


def test_records_are_plain_values_no_numpy(registry, roots):
    rec = open_reader(_task(registry, "vqa"), roots["vqa"]).random_access("train2014")[0]
    assert type(rec["question_id"]) is int and type(rec["answers"]) is list and isinstance(rec["text"], str)
    assert np.asarray(rec["image"]).shape[2] == 3


# ---- the streaming JSON reader ---------------------------------------------------------------------------------

DOCS = [
    {"info": {"a": [1, {"b": "}]"}]}, "questions": [{"q": "what?", "id": 12345678901}, {"q": 'é " \\ ]'}], "z": 1.5},
    {"questions": [], "n": 0},
    {"license": None, "questions": [1, 2.5e-3, -7, True, None, "x", [3, [4]], {}], "data_type": "mscoco"},
]


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_json_list_items_one_at_a_time_equal_json_loads(tmp_path, chunk, indent):
    from mmbench.data.jsonfiles import iter_json_list

    for i, doc in enumerate(DOCS):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(doc, indent=indent, ensure_ascii=False), encoding="utf-8")
        assert list(iter_json_list(path, "questions", chunk=chunk)) == doc["questions"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"questions": [1, 2', r"not valid JSON \(expected ',' or '\]' at character 19\)"),
        ('{"questions": [1, 2,]}', r"not valid JSON \(Expecting value at character 20\)"),
        ('{"questions": [1]} x', r"not valid JSON \(extra data after the object at character 19\)"),
        ('{"annotations": [1]}', r"key 'questions': expected a list$"),
        ('{"questions": "yes"}', r"key 'questions': expected a list$"),
        ("[1, 2]", r"key 'questions': expected a list \(the file is not a JSON object\)"),
        ("", r"not valid JSON \(Expecting value at character 0\)"),
    ],
)
def test_json_list_errors_name_the_file(tmp_path, text, message):
    from mmbench.data.jsonfiles import iter_json_list

    path = tmp_path / "q.json"
    path.write_text(text)
    for chunk in (2, 1 << 20):
        with pytest.raises(DataError, match=rf"^{path}: {message}"):
            list(iter_json_list(path, "questions", chunk=chunk))
