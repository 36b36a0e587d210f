"""The synthetic multimodal tasks are learnable: a tiny random-init model fine-tuned briefly through the real
protocol (Trainer, readers, official metrics) beats chance widely, and VQA beats what the question alone gives.
(The text case, SST-2, is in tests/test_finetune.py.)"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from mmbench import evaluate, paths
from mmbench.data import open_reader, synthetic
from mmbench.metrics.vqa import vqa_scores


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("learn")
    short = ["task.data.synthetic.finetune.max_steps=300", "task.data.synthetic.finetune.val_every_steps=100"]
    hm = evaluate(
        "clip-tiny", "hateful_memes", data="synthetic", output=out, overrides=short, progress=False, num_workers=0
    )
    vqa = evaluate("clip-tiny", "vqav2", data="synthetic", output=out, progress=False, num_workers=0)
    return {"out": out, **{r.task: r for r in hm + vqa}}


def test_image_text_classification_beats_chance(results):
    res = results["hateful_memes"]
    assert res.status == "ok" and res.n_samples == 300
    # ROC-AUC of a coin is 0.5; the labels need image and text together (each alone gives ~0.55-0.60).
    print(f"Hateful Memes ROC-AUC {res.metrics['roc_auc']:.3f} (chance 0.5)")
    assert res.metrics["roc_auc"] > 0.8
    # selected on a seeded 6% of train (180 of 3000 memes), never on dev_seen, which is scored
    sel = res.details["selection"]
    assert sel["rule"] == "holdout" and sel["data"]["n"] == 180 and res.details["n_train"] == 2820
    assert not sel["is_scored_split"] and res.details["n_eval"] == {"dev_seen": 300}


def test_vqa_beats_chance_and_the_question_alone(results, registry):
    res = results["vqav2"]
    task = registry.task("vqav2")
    reader = open_reader(task, synthetic.ensure(task, paths.cache_dir()))  # the generated data the run read
    vocab_size = res.details["answer_vocab"]["size"]
    # The best any image-blind answerer can do here: the most frequent training answer for the same question text.
    by_question: dict[str, Counter] = defaultdict(Counter)
    for rec in reader.samples(task.finetune.train_split):
        by_question[rec["text"]][Counter(rec["answers"]).most_common(1)[0][0]] += 1
    val = list(reader.samples(task.data.split))
    prior = [by_question[r["text"]].most_common(1)[0][0] if by_question[r["text"]] else "yes" for r in val]
    blind = vqa_scores(prior, [r["answers"] for r in val], [r["answer_type"] for r in val])["vqa_accuracy"]
    assert res.metrics["vqa_accuracy"] > 5 / vocab_size, "far above a uniformly random answer"
    print(f"VQA accuracy {res.metrics['vqa_accuracy']:.3f}, question alone {blind:.3f}, uniform {1 / vocab_size:.3f}")
    assert res.metrics["vqa_accuracy"] > blind + 0.05, (res.metrics, blind)
    # the final checkpoint of the fixed schedule: nothing was evaluated on val2014 before it was scored
    sel = res.details["selection"]
    assert (sel["rule"], sel["data"], sel["chosen_step"], res.details["evaluated"]) == ("final", None, 1000, "final")
    assert all(set(h) == {"step"} for h in res.details["val_history"])
    # The paper's number comes from the server: test-dev predictions in the official result format.
    assert res.details["submissions"] == {"test-dev2015": "vqav2_test-dev2015_submission.json"}
    sub = json.loads((results["out"] / "artifacts" / "clip-tiny" / "vqav2_test-dev2015_submission.json").read_text())
    test_dev = list(reader.samples("test-dev2015"))
    assert sorted(e["question_id"] for e in sub) == sorted(r["question_id"] for r in test_dev)
    assert all(set(e) == {"question_id", "answer"} and e["answer"] in vocab_answers(reader) for e in sub)


def vocab_answers(reader) -> set[str]:
    return set(reader.answer_vocab(paths.cache_dir()).answers)


def test_metrics_undefined_on_the_data_are_null_in_strict_json(tmp_path):
    """One VQA question has one answer type: the other per-type accuracies are undefined, recorded as null."""
    from mmbench.results.store import result_path

    steps = ["task.data.synthetic.finetune.max_steps=2", "task.data.synthetic.finetune.val_every_steps=1"]
    [res] = evaluate(
        "clip-tiny", "vqav2", data="synthetic", limit=1, output=tmp_path, overrides=steps, progress=False, num_workers=0
    )
    text = result_path(tmp_path, "clip-tiny", "vqav2").read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))["metrics"]
    assert sorted(v is None for v in metrics.values()) == [False, False, True, True]  # overall + its own type
    assert res.scores["vqa_accuracy"] == 100 * metrics["vqa_accuracy"]
