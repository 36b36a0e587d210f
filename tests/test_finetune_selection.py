"""Fine-tuning's checkpoint selection (split / holdout / final, ties, NaN), the text length per input kind, and the
checks that run before the first step. Real runs of flava-tiny / clip-tiny on synthetic data written in the real
formats; the selection is shown not to read the scored split by scrambling that split's labels."""

from __future__ import annotations

import json
import math
import shutil
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmbench import evaluate, paths
from mmbench.data import IndexedStream, open_reader, synthetic
from mmbench.errors import DataError
from mmbench.lit.finetune_data import Collate, TableStream, holdout_split
from mmbench.lit.run_folder import STATE, RunFolder, improves
from mmbench.models import build_model
from mmbench.protocols.finetune import text_length

STEPS = ["task.data.synthetic.finetune.max_steps=20", "task.data.synthetic.finetune.val_every_steps=10"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(model: str, task: str, tmp_path: Path, *overrides: str, **kwargs):
    kwargs = {"data": "synthetic", "progress": False, "num_workers": 0, "cache_dir": tmp_path / "cache", **kwargs}
    return evaluate(model, task, output=tmp_path / "out", overrides=list(overrides), **kwargs)[0]


# ---- the pieces -------------------------------------------------------------------------------------------------
def test_ties_within_the_tolerance_keep_the_incumbent_and_nan_never_wins():
    assert improves(0.5, None, 1e-5) and not improves(math.nan, None, 1e-5)
    assert not improves(0.5 + 5e-6, 0.5, 1e-5)  # a tie: the incumbent stays
    assert improves(0.5 + 2e-5, 0.5, 1e-5) and not improves(0.4, 0.5, 1e-5) and not improves(math.nan, 0.5, 1e-5)

    folder = RunFolder(Path("unused"), "accuracy", max_steps=50, fingerprint="f", rule={}, tolerance=1e-5)
    values = {10: 0.5, 20: 0.5 + 5e-6, 30: math.nan, 40: 0.6, 50: 0.6 - 1e-6}
    chosen = [step for step, v in values.items() if folder.choose(step, {"accuracy": v})]
    assert chosen == [10, 40] and (folder.best_step, folder.best_value, folder.chosen_by) == (40, 0.6, "value")

    # No defined value by the last step: the final weights, and the state says why.
    undefined = RunFolder(Path("unused"), "roc_auc", max_steps=20, fingerprint="f", rule={})
    assert [undefined.choose(s, {"roc_auc": math.nan}) for s in (10, 20)] == [False, True]
    assert undefined.best_value is None and undefined.chosen_by == "final (no defined validation value)"

    final = RunFolder(Path("unused"), "accuracy", max_steps=20, fingerprint="f", rule={}, mode="final")
    assert [final.choose(s, {}) for s in (10, 20)] == [False, True] and final.chosen_by == "final"


def test_the_holdout_partitions_the_table_by_seed():
    table = [{"index": i} for i in range(103)]
    kept, held = holdout_split(table, 0.1, seed=3)
    kept_ids, held_ids = [r["index"] for r in kept], [r["index"] for r in held]
    assert len(held_ids) == 10 and sorted(kept_ids + held_ids) == list(range(103))
    assert kept_ids == sorted(kept_ids) and held_ids == sorted(held_ids)  # table order on both sides
    assert held_ids == [r["index"] for r in holdout_split(table, 0.1, seed=3)[1]]
    assert held_ids != [r["index"] for r in holdout_split(table, 0.1, seed=4)[1]]
    assert len(holdout_split(table[:2], 0.01, 0)[1]) == 1 and len(holdout_split(table[:2], 0.99, 0)[1]) == 1
    with pytest.raises(DataError, match="too few to hold out"):
        holdout_split(table[:1], 0.5, 0)


def test_a_table_stream_splits_ranks_and_workers_like_the_indexed_stream(registry):
    """The hold-out evaluation must be exact under DDP: the same blocks per rank as a split's `IndexedStream`."""
    task = registry.task("rte")
    reader = open_reader(task, synthetic.ensure(task, paths.cache_dir()))
    rows = list(reader.samples("validation"))
    for world in (1, 2, 3):
        for rank in range(world):
            split = IndexedStream(reader, "validation", lambda r: r["index"], block_size=8)
            table = TableStream(rows, lambda r: r["index"], block_size=8)
            split.set_partition(rank, world)
            table.set_partition(rank, world)
            assert list(table) == list(split)
    assert list(TableStream([], lambda r: r, 8)) == []


def test_text_length_per_input_kind_never_beyond_the_model(registry):
    p_text, p_pair = registry.task("mnli").finetune, registry.task("snli_ve").finetune
    flava = registry.model("flava")
    assert text_length(p_text, flava, None)["used"] == 512 and text_length(p_pair, flava, None)["used"] == 77
    capped = text_length(p_text, flava, types.SimpleNamespace(max_text_positions=100))
    assert capped == {"used": 100, "asked": 512, "from": "model.text_only_max_length", "model_limit": 100}
    explicit = registry.task("mnli", {"finetune": {"max_text_length": 128}}).finetune
    assert text_length(explicit, flava, None) == {
        "used": 128,
        "asked": 128,
        "from": "finetune.max_text_length",
        "model_limit": None,
    }


def test_glue_text_is_cut_at_the_text_only_length_not_77(tmp_path, registry):
    """flava-tiny given 160 text positions: a long MNLI-like pair keeps more than 77 tokens, and a GLUE run uses
    (and records) the text-only length."""
    wide = {"arch": {"text": {"max_position_embeddings": 160}}, "text_only_max_length": 160}
    model = build_model(registry.model("flava-tiny", wide))
    long_pair = {
        "index": 0,
        "text": " ".join(["the red circle is left of the blue square"] * 12),
        "text_pair": " ".join(["a small green triangle is above it"] * 12),
        "target": 0,
    }
    assert Collate(model, "classification", 77)([long_pair])["tokens"]["input_ids"].shape == (1, 77)
    tokens = Collate(model, "classification", 160)([long_pair])["tokens"]
    assert tokens["input_ids"].shape == (1, 160)
    with torch.no_grad():
        assert model.text_features(**tokens).shape == (1, 32)  # the 160 positions exist

    wide_set = ["model.arch.text.max_position_embeddings=160", "model.text_only_max_length=160"]
    length = _run("flava-tiny", "rte", tmp_path, *STEPS, *wide_set).details["text_length"]
    assert (length["used"], length["asked"], length["from"]) == (160, 160, "model.text_only_max_length")
    assert length["model_limit"] in (None, 160)  # what the wrapper states, once it states its positions


# ---- selection never reads the scored split -------------------------------------------------------------------
def _flip_labels(root: Path, config: str, split: str) -> None:
    """Turn every binary label of `split` into its opposite (same file, same schema)."""
    [path] = (root / config).glob(f"{split}-*.parquet")
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    assert set(labels) == {0, 1}
    flipped = pa.array([1 - v for v in labels], type=table.schema.field("label").type)
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", flipped), path)


@pytest.fixture(scope="module")
def rte_pair(tmp_path_factory, registry):
    """Two copies of synthetic RTE: as written, and with the scored split's (validation) labels flipped."""
    task = registry.task("rte")
    clean = tmp_path_factory.mktemp("clean")
    source = synthetic.ensure(task, paths.cache_dir())
    shutil.copytree(source, clean / "glue")  # GLUE's folder holds one sub-folder per config
    garbled = tmp_path_factory.mktemp("garbled")
    shutil.copytree(source, garbled / "glue")
    _flip_labels(garbled / "glue", "rte", "validation")
    return clean, garbled


@pytest.mark.parametrize("selection", ["holdout", "final"])
def test_selection_never_reads_the_scored_split(tmp_path, rte_pair, selection):
    """Flipped validation labels turn every validation accuracy a into 1 - a. Under `holdout` and `final` the
    training, the selection history and the chosen step stay exactly the same; only the score moves, to 1 - a."""
    clean, garbled = rte_pair
    mode = [f"task.finetune.selection={selection}", "task.finetune.holdout_fraction=0.1"]
    a = _run("flava-tiny", "rte", tmp_path / "a", *STEPS, *mode, data="real", data_root=clean)
    b = _run("flava-tiny", "rte", tmp_path / "b", *STEPS, *mode, data="real", data_root=garbled)
    sel = a.details["selection"]
    assert sel["rule"] == selection and not sel["is_scored_split"]
    if selection == "holdout":
        assert sel["data"] == {"split": "train", "holdout_fraction": 0.1, "holdout_seed": 0, "n": 200}
        assert a.details["n_train"] == 1800 and all("accuracy" in h for h in a.details["val_history"])
    else:
        assert sel["data"] is None and a.details["val_history"] == [{"step": 10}, {"step": 20}]
        assert (sel["chosen_step"], a.details["evaluated"]) == (20, "final")
    assert b.details["val_history"] == a.details["val_history"] and b.details["selection"] == sel
    assert b.metrics["accuracy"] == pytest.approx(1 - a.metrics["accuracy"], abs=1e-12)
    wa = torch.load(Path(a.details["run_folder"]) / "best.pt", weights_only=True)
    wb = torch.load(Path(b.details["run_folder"]) / "best.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_split_selection_on_the_scored_split_says_so(tmp_path, rte_pair):
    """GLUE keeps best-on-dev; the result records that the selection split is the scored split, and the flipped
    labels reach the history (the control for the test above)."""
    clean, garbled = rte_pair
    a = _run("flava-tiny", "rte", tmp_path / "a", *STEPS, data="real", data_root=clean)
    b = _run("flava-tiny", "rte", tmp_path / "b", *STEPS, data="real", data_root=garbled)
    sel = a.details["selection"]
    assert sel["rule"] == "split" and sel["data"] == {"split": "validation"} and sel["is_scored_split"]
    assert sel["metric"] == "accuracy" and sel["tolerance"] == 1e-5 and "incumbent" in sel["ties"]
    history = [h["accuracy"] for h in a.details["val_history"]]
    assert [h["accuracy"] for h in b.details["val_history"]] == pytest.approx([1 - v for v in history], abs=1e-12)
    assert sel["chosen_value"] == a.metrics["accuracy"] and sel["chosen_step"] in (10, 20)


def test_the_multimodal_tasks_do_not_select_on_their_scored_split(registry):
    vqa, hm, snli = (registry.task(t).finetune for t in ("vqav2", "hateful_memes", "snli_ve"))
    assert vqa.selection == "final"
    assert hm.selection == "holdout" and 0 < hm.holdout_fraction < 1
    assert snli.selection == "split" and snli.val_split == "dev" != registry.task("snli_ve").data.split


def test_a_nan_score_is_an_error_and_a_nan_validation_is_never_selected(tmp_path, registry):
    """One dev_seen meme: ROC-AUC is undefined (one class). Selection on it takes nothing but the final
    weights, said so in state.json; scoring it is an error naming the metric and split."""
    task = registry.task("hateful_memes", {"data": {"synthetic": {"n_train": 16}}})
    root = synthetic.write(task, tmp_path / "data" / "hateful_memes", n=8)
    mode = ["task.finetune.selection=split", "task.finetune.val_split=dev_seen"]
    steps = ["task.data.synthetic.finetune.max_steps=2", "task.data.synthetic.finetune.val_every_steps=1"]
    with pytest.raises(DataError, match=r"roc_auc is undefined on split 'dev_seen'"):
        _run("clip-tiny", "hateful_memes", tmp_path, *mode, *steps, data="real", data_root=root.parent, limit=1)
    [state] = (tmp_path / "cache" / "finetune").rglob(STATE)
    saved = json.loads(state.read_text())
    assert [math.isnan(h["roc_auc"]) for h in saved["history"]] == [True, True]
    assert saved["best_step"] == 2 and saved["best_value"] is None
    assert saved["chosen_by"] == "final (no defined validation value)"


# ---- every split and file is checked before the first step ------------------------------------------------------
@pytest.fixture(scope="module")
def vqa_small(tmp_path_factory, registry):
    task = registry.task("vqav2", {"data": {"synthetic": {"n_train": 24}}})
    return synthetic.write(task, tmp_path_factory.mktemp("vqa") / "vqav2", n=12)


@pytest.mark.parametrize(
    "remove", ["v2_OpenEnded_mscoco_test-dev2015_questions.json", "test2015", "v2_mscoco_train2014_annotations.json"]
)
def test_a_missing_split_file_stops_the_run_before_any_step(tmp_path, vqa_small, remove):
    root = tmp_path / "data" / "vqav2"
    shutil.copytree(vqa_small, root)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    steps = ["task.data.synthetic.finetune.max_steps=2", "task.data.synthetic.finetune.val_every_steps=1"]
    with pytest.raises(DataError, match=rf"{target}: .*missing"):
        _run("clip-tiny", "vqav2", tmp_path, *steps, data="real", data_root=root.parent)
    assert not list((tmp_path / "cache").rglob("*.ckpt")) and not list((tmp_path / "cache").rglob("*.pt"))
