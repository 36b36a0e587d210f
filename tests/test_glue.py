"""GLUE data: the synthetic writer produces the hub's parquet layout, the reader reads it back, every generated
label is valid and tokenizes without unknown words, and bad input is one line naming the file and the row."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmbench.data import open_reader, synthetic
from mmbench.data.synthetic.glue import CONFIGS, examples
from mmbench.errors import DataError
from mmbench.models.tokenizers import tiny_wordpiece

GLUE = ["mnli", "cola", "mrpc", "qqp", "sst2", "qnli", "rte", "stsb"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory, registry):
    """One root holding the mnli/ and stsb/ folders, as a local copy of the hub repo would."""
    root = tmp_path_factory.mktemp("glue")
    for name in ("mnli", "stsb"):
        task = registry.task(name)
        gen = synthetic.write(task, root / f".{name}", n=21, seed=5)
        (gen / task.data.options["glue"]["config"]).rename(root / name)
    return root


def test_tasks_and_group_follow_the_paper_order(registry):
    assert registry.expand(groups=["glue"]) == GLUE
    for name in GLUE:
        task = registry.task(name)
        assert task.protocol == "finetune" and task.domain == "language" and task.data.format == "glue"
        assert task.scores == [task.primary] and task.finetune.input == "text"
    assert registry.task("mnli").metrics == ["accuracy", "accuracy_mismatched"]
    assert registry.task("mrpc").primary == registry.task("qqp").primary == "acc_f1_mean"
    assert (registry.task("cola").primary, registry.task("stsb").primary) == ("mcc", "pearson")
    rte = registry.task("rte").finetune  # fairseq RoBERTa's RTE row
    assert (rte.lr, rte.batch_size, rte.max_steps, rte.warmup_steps) == (2e-5, 16, 2036, 122)
    assert (rte.optimizer, rte.betas, rte.eps, rte.weight_decay, rte.schedule) == (
        "adamw",
        [0.9, 0.98],
        1e-6,
        0.1,
        "polynomial",
    )


def test_layout_columns_and_dtypes_are_the_hubs(glue_root):
    names = sorted(p.name for p in (glue_root / "mnli").iterdir())
    assert names == [
        f"{s}-00000-of-00001.parquet"
        for s in ("test_matched", "test_mismatched", "train", "validation_matched", "validation_mismatched")
    ]
    schema = pq.read_schema(glue_root / "mnli" / "validation_matched-00000-of-00001.parquet")
    assert schema.names == ["premise", "hypothesis", "label", "idx"]
    assert (schema.field("label").type, schema.field("idx").type) == (pa.int64(), pa.int32())
    stsb = pq.read_table(glue_root / "stsb" / "validation-00000-of-00001.parquet")
    assert (
        stsb.schema.names == ["sentence1", "sentence2", "label", "idx"]
        and stsb.schema.field("label").type == pa.float32()
    )
    test = pq.read_table(glue_root / "stsb" / "test-00000-of-00001.parquet")
    assert set(test.column("label").to_pylist()) == {-1.0}  # hidden, as on the hub


def test_reader_reads_records_back(registry, glue_root):
    reader = open_reader(registry.task("mnli"), glue_root)
    recs = list(reader.samples("validation_matched"))
    assert [r["index"] for r in recs] == list(range(21)) and [r["key"] for r in recs] == list(range(21))
    assert all(isinstance(r["text"], str) and isinstance(r["text_pair"], str) and r["image"] is None for r in recs)
    assert {r["label"] for r in recs} <= {0, 1, 2}
    assert [r["index"] for r in reader.samples("train", limit=5, keep=lambda i: i % 2 == 0)] == [0, 2, 4]
    assert {r["label"] for r in reader.samples("test_mismatched")} == {None}
    stsb = list(open_reader(registry.task("stsb"), glue_root).samples("validation"))
    assert all(isinstance(r["label"], float) and 0 <= r["label"] <= 5 for r in stsb)


@pytest.mark.parametrize("config", GLUE)
def test_every_task_has_valid_balanced_labels_and_known_words(config):
    rows = examples(config, "train", 300, seed=0)
    columns, regression = CONFIGS[config]
    assert all((r[1] is None) == (len(columns) == 1) for r in rows)
    labels = [r[2] for r in rows]
    if regression:
        assert all(0 <= y <= 5 for y in labels) and max(labels) - min(labels) > 4
    else:
        counts = Counter(labels)
        assert set(counts) == set(range(3 if config == "mnli" else 2))
        assert min(counts.values()) > 0.25 * len(rows) / len(counts), counts
    tok = tiny_wordpiece()
    unk = tok.convert_tokens_to_ids("[UNK]")
    texts = [t for r in rows for t in r[:2] if t is not None]
    assert not any(unk in tok(t)["input_ids"] for t in texts)
    assert len({r[:2] for r in rows}) > 0.8 * len(rows), "too few distinct examples"


def test_synthetic_is_deterministic_per_seed():
    assert examples("rte", "validation", 20, 3) == examples("rte", "validation", 20, 3)
    assert examples("rte", "validation", 20, 3) != examples("rte", "validation", 20, 4)
    assert examples("mnli", "validation_matched", 20, 3) != examples("mnli", "validation_mismatched", 20, 3)


def _write(path: Path, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def _cola(tmp_path: Path, **columns) -> Path:
    return _write(tmp_path / "cola" / "validation-00000-of-00001.parquet", **columns)


def test_missing_column_names_file_and_column(registry, tmp_path):
    path = _cola(tmp_path, text=["a red circle"], label=[1], idx=[0])
    with pytest.raises(DataError) as e:
        open_reader(registry.task("cola"), tmp_path)
    assert str(e.value) == f"{path}: no column 'sentence' (columns: text, label, idx)"


def test_label_outside_the_label_set_names_file_and_row(registry, tmp_path):
    path = _cola(tmp_path, sentence=["a red circle", "a blue square"], label=[1, 2], idx=[10, 11])
    with pytest.raises(DataError) as e:
        open_reader(registry.task("cola"), tmp_path)  # every row is checked before the first step
    assert str(e.value) == f"{path}: row 1 (idx 11): label 2 is not a class id in 0..1"
    stsb = _write(
        tmp_path / "stsb" / "validation-00000-of-00001.parquet", sentence1=["a"], sentence2=["b"], label=[5.5]
    )
    with pytest.raises(DataError, match=rf"^{stsb}: row 0 \(idx 0\): label 5.5 is outside \[0, 5\]$"):
        list(open_reader(registry.task("stsb"), tmp_path).samples("validation"))


def test_null_text_names_file_row_and_column(registry, tmp_path):
    path = _cola(tmp_path, sentence=["fine", None], label=[1, 0], idx=[0, 1])
    with pytest.raises(DataError, match=rf"^{path}: row 1 \(idx 1\): column 'sentence' holds None, not a string$"):
        list(open_reader(registry.task("cola"), tmp_path).samples("validation"))


def test_malformed_parquet_names_the_file(registry, tmp_path):
    path = tmp_path / "cola" / "validation-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(DataError) as e:
        open_reader(registry.task("cola"), tmp_path)
    assert str(e.value).startswith(f"{path}: not a readable parquet file (") and "\n" not in str(e.value)


def test_missing_split_lists_the_splits_present(registry, tmp_path):
    _cola(tmp_path, sentence=["x"], label=[1], idx=[0])
    reader = open_reader(registry.task("cola"), tmp_path)
    with pytest.raises(DataError, match=r"cola: no train-\*.parquet file \(splits present: validation\)"):
        reader.check("train")


def test_offline_missing_data_is_the_clear_message(registry, tmp_path):
    with pytest.raises(DataError) as e:
        open_reader(registry.task("mnli"), tmp_path / "glue")
    msg = str(e.value)
    assert msg.startswith(f"task 'mnli': dataset not found at {tmp_path / 'glue'}. Expected ")
    assert "mnli/validation_matched-00000-of-00001.parquet" in msg and "HF_HUB_OFFLINE is set" in msg
    assert "huggingface.co/datasets/nyu-mll/glue" in msg and "--data synthetic" in msg


def test_online_it_tries_the_hub_then_gives_the_same_message(tmp_path):
    """With the hub allowed but unreachable (a closed local port), the fetch is attempted and fails cleanly."""
    code = (
        "from pathlib import Path\nfrom mmbench.config import Registry\nfrom mmbench.data import open_reader\n"
        f"open_reader(Registry().task('rte'), Path({str(tmp_path / 'glue')!r}))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "could not fetch nyu-mll/glue/rte" in proc.stderr
    assert (
        "DataError: task 'rte': dataset not found at" in proc.stderr
        and "fetched when the hub is reachable" in proc.stderr
    )
