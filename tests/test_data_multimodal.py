"""VQAv2, SNLI-VE and Hateful Memes: synthetic writers produce the official layouts, readers read them back with the
agreed record interface, generated labels are true of the image, and bad input names file and record."""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from mmbench.data import dataset_root, open_reader, synthetic
from mmbench.data.synthetic.hateful_memes import meme
from mmbench.data.synthetic.scene import BACKGROUNDS, COLOURS, SHAPES, sample_scene
from mmbench.data.synthetic.snli_ve import hypothesis
from mmbench.data.vqa_vocab import AnswerVocab
from mmbench.errors import DataError

VQA_KEYS = {"index", "text", "text_pair", "image", "label", "answers", "question_id", "answer_type", "question_type"}
SMALL = {"n_train": 24}


def _task(registry, name, **data):
    return registry.task(name, overrides={"data": {"synthetic": SMALL, **data}})


@pytest.fixture(scope="module")
def vqa_root(tmp_path_factory, registry):
    return synthetic.write(_task(registry, "vqav2"), tmp_path_factory.mktemp("vqa") / "vqav2", n=12, seed=1)


@pytest.fixture(scope="module")
def snli_root(tmp_path_factory, registry):
    return synthetic.write(_task(registry, "snli_ve"), tmp_path_factory.mktemp("ve") / "snli_ve", n=12, seed=1)


@pytest.fixture(scope="module")
def memes_root(tmp_path_factory, registry):
    return synthetic.write(_task(registry, "hateful_memes"), tmp_path_factory.mktemp("hm") / "hm", n=8, seed=1)


def _copy(src, tmp_path):
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _colour_present(image, colour: str) -> bool:
    """Exact RGB match: the memes are lossless PNGs."""
    return bool((np.asarray(image) == np.array(COLOURS[colour], dtype=np.uint8)).all(axis=-1).sum() >= 10)


def _background(image) -> str:
    """The most frequent pixel value is the background (the shapes cover a small part of the picture)."""
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    values, counts = np.unique(pixels // 16, axis=0, return_counts=True)
    top = values[counts.argmax()] * 16 + 8
    return min(BACKGROUNDS, key=lambda b: np.abs(np.array(BACKGROUNDS[b]) - top).max())


def _near(image, colour: str) -> int:
    """How many pixels are close to the colour (JPEG blurs exact values)."""
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    return int((np.abs(pixels - np.array(COLOURS[colour])).max(axis=1) < 40).sum())


# ---- VQAv2 ---------------------------------------------------------------------------------------------------


def test_vqa_files_are_the_official_layout(vqa_root):
    q = json.loads((vqa_root / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    a = json.loads((vqa_root / "v2_mscoco_val2014_annotations.json").read_text())
    assert q["data_subtype"] == "val2014" and len(q["questions"]) == 12 and len(a["annotations"]) == 12
    first = q["questions"][0]
    assert set(first) == {"image_id", "question", "question_id"}
    assert first["question_id"] == first["image_id"] * 1000  # VQAv2's id scheme
    assert (vqa_root / "val2014" / f"COCO_val2014_{first['image_id']:012d}.jpg").is_file()
    ann = a["annotations"][0]
    assert [x["answer_id"] for x in ann["answers"]] == list(range(1, 11))
    assert {x["answer_type"] for x in a["annotations"]} == {"yes/no", "number", "other"}
    assert {x["question_type"] for x in a["annotations"]} <= {"how many", "what color is the", "is there a", "is the"}
    train = json.loads((vqa_root / "v2_OpenEnded_mscoco_train2014_questions.json").read_text())["questions"]
    assert len(train) == 24
    # test-dev2015 is a subset of test2015 and has no image folder of its own
    dev = json.loads((vqa_root / "v2_OpenEnded_mscoco_test-dev2015_questions.json").read_text())["questions"]
    test = json.loads((vqa_root / "v2_OpenEnded_mscoco_test2015_questions.json").read_text())["questions"]
    assert dev and all(x in test for x in dev) and len(dev) < len(test)
    assert not (vqa_root / "test-dev2015").exists() and not (vqa_root / "v2_mscoco_test2015_annotations.json").exists()


def test_vqa_reader_records(registry, vqa_root):
    reader = open_reader(_task(registry, "vqav2"), vqa_root)
    assert reader.format == "vqa"
    recs = list(reader.samples("val2014"))
    assert [r["index"] for r in recs] == list(range(12))
    raw = json.loads((vqa_root / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    for r, ann in zip(recs, raw):
        assert set(r) == VQA_KEYS and r["label"] is None and r["text_pair"] is None
        assert r["question_id"] == ann["question_id"] and r["answers"] == [x["answer"] for x in ann["answers"]]
        assert r["answer_type"] == ann["answer_type"] and r["question_type"] == ann["question_type"]
        assert r["text"].endswith("?") and r["image"].size == (64, 64) and r["image"].mode == "RGB"
    assert [r["index"] for r in reader.samples("train2014", limit=5, keep=lambda i: i % 2 == 0)] == [0, 2, 4]


def test_vqa_test_dev_reads_test2015_images_without_answers(registry, vqa_root):
    task = _task(registry, "vqav2", split="test-dev2015")
    recs = list(open_reader(task, vqa_root).samples("test-dev2015"))
    assert recs and all(r["answers"] == [] and r["answer_type"] == "" and r["label"] is None for r in recs)
    assert all(r["image"].size == (64, 64) for r in recs)


def test_vqa_synthetic_majority_answer_is_true_of_the_image(registry, vqa_root):
    recs = list(open_reader(_task(registry, "vqav2"), vqa_root).samples("train2014"))
    for r in recs:
        majority = Counter(r["answers"]).most_common(1)[0][0]
        if r["text"] == "what color is the background?":
            assert majority == _background(r["image"]), (r["index"], majority)
        elif r["answer_type"] == "other":
            assert majority in COLOURS and _near(r["image"], majority) >= 20, (r["text"], majority)
        elif m := re.fullmatch(r"is the background (\w+)\?", r["text"]):
            assert (majority == "yes") == (m[1] == _background(r["image"])), (r["text"], majority)
        elif r["answer_type"] == "yes/no":
            colour = re.fullmatch(r"is there a (\w+) (\w+)\?", r["text"]).group(1)
            assert (majority == "yes") == (_near(r["image"], colour) >= 20), (r["text"], majority)
        else:
            assert majority in {"1", "2", "3", "4"}
        # realistic noise: references need not agree, and at most a few disagree with the majority
        assert sum(a != majority for a in r["answers"]) <= 5


def test_vqa_answer_vocab_built_once_and_cached_by_file_identity(registry, vqa_root, tmp_path):
    root = _copy(vqa_root, tmp_path)
    reader = open_reader(_task(registry, "vqav2"), root)
    vocab = reader.answer_vocab(tmp_path / "cache", min_count=1)
    assert vocab.answers[0] == "<unk>" and vocab.answers[1:] == sorted(vocab.answers[1:])
    assert set(vocab.answers[1:]) <= {"1", "2", "3", "4", "yes", "no", *COLOURS, *BACKGROUNDS}
    assert len(list((tmp_path / "cache" / "vqa").glob("*.json"))) == 1
    again = reader.answer_vocab(tmp_path / "cache", min_count=1)
    assert again.answers == vocab.answers and again.hash == vocab.hash
    assert len(list((tmp_path / "cache" / "vqa").glob("*.json"))) == 1
    # A changed annotation file is a new vocabulary: an answer given in 9 questions enters it at min_count 9.
    ann_file = root / "v2_mscoco_val2014_annotations.json"
    data = json.loads(ann_file.read_text())
    for ann in data["annotations"][:9]:
        ann["multiple_choice_answer"] = "Zebra!"
    ann_file.write_text(json.dumps(data))
    changed = reader.answer_vocab(tmp_path / "cache")  # the task's min_answer_count: 9
    assert "zebra" in changed.answers and changed.hash != vocab.hash
    assert len(list((tmp_path / "cache" / "vqa").glob("*.json"))) == 2


def test_answer_vocab_from_multiple_choice_answers():
    # Normalised counts: "Two" / "2" / "two" -> "2" (3); "yes" / "yes." -> "yes" (2); "the cat" -> "cat" (1).
    vocab = AnswerVocab.build(["Two", "2", "two", "yes", "yes.", "the cat"], min_count=2)
    assert vocab.answers == ["<unk>", "2", "yes"]
    assert vocab.index("2") == 1 and vocab.index("two") == 1 and vocab.index("Yes!") == 2 and vocab.index("cat") == 0


def test_soft_targets_official_and_beit3():
    answers_vocab = ["<unk>", "1000", "2", "3", "4", "cat", "dog", "yes"]
    official, beit3 = AnswerVocab(answers_vocab), AnswerVocab(answers_vocab, soft_score="beit3")
    # 3 x "2", 2 x "3", 1 x "two", 4 x "4": "2" m=3 -> 0.9, "3" m=2 -> 0.6, "4" m=4 -> 1.0; the raw "two" is not a
    # "2" for either scheme (references are never digit-mapped); BEiT-3's table gives the same 0.9 / 0.6 / 1.0.
    refs = ["2"] * 3 + ["3"] * 2 + ["two"] + ["4"] * 4
    expected = torch.tensor([0, 0, 0.9, 0.6, 1.0, 0, 0, 0])
    assert torch.allclose(official.soft_targets(refs), expected) and torch.allclose(beit3.soft_targets(refs), expected)
    # 9 x "1,000" + "1000" disagree -> the official punctuation step turns all ten into "1000" -> m = 10 -> 1.0;
    # BEiT-3 counts the raw "1000" once -> 0.3.
    refs = ["1,000"] * 9 + ["1000"]
    assert official.soft_targets(refs)[1].item() == pytest.approx(1.0)
    assert beit3.soft_targets(refs)[1].item() == pytest.approx(0.3)
    # Three answers ["cat", "cat", "dog"], official leave-one-out:
    #   "cat": each "cat" position sees 1 other "cat" (1/3), the "dog" position sees 2 (2/3) -> (1/3+1/3+2/3)/3 = 4/9;
    #   "dog": each "cat" position sees the 1 "dog" (1/3), the "dog" position sees none (0) -> (1/3+1/3+0)/3 = 2/9.
    # BEiT-3's table ignores the number of answers: "cat" count 2 -> 0.6, "dog" count 1 -> 0.3.
    t = official.soft_targets(["cat", "cat", "dog"])
    assert t[5].item() == pytest.approx(4 / 9) and t[6].item() == pytest.approx(2 / 9)
    t = beit3.soft_targets(["cat", "cat", "dog"])
    assert t[5].item() == pytest.approx(0.6) and t[6].item() == pytest.approx(0.3)
    # No answers (test split): all zeros; <unk> is never a target.
    assert official.soft_targets([]).sum() == 0 and official.soft_targets(["<unk>"] * 10)[0] == 0


# ---- SNLI-VE ---------------------------------------------------------------------------------------------------


def test_snli_ve_reader_and_both_id_spellings(registry, snli_root):
    lines = [json.loads(x) for x in (snli_root / "snli_ve_test.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    assert any("Flikr30kID" in x for x in lines) and any("Flickr30K_ID" in x for x in lines)
    recs = list(open_reader(_task(registry, "snli_ve"), snli_root).samples("test"))
    assert [r["index"] for r in recs] == list(range(12))
    for r, line in zip(recs, lines):
        assert set(r) == {"index", "text", "text_pair", "image", "label"} and r["text_pair"] is None
        assert r["text"] == line["sentence2"]
        assert r["label"] == ["entailment", "neutral", "contradiction"].index(line["gold_label"])
        image_id = line.get("Flikr30kID", line.get("Flickr30K_ID"))
        assert (snli_root / "flickr30k_images" / f"{image_id}.jpg").is_file()
    assert len(list(open_reader(_task(registry, "snli_ve"), snli_root).samples("train"))) == 24


def test_snli_ve_hypotheses_are_labelled_by_the_scene():
    labels = Counter()
    for seed in range(600):
        rng = random.Random(seed)
        scene = sample_scene(rng)
        text, label = hypothesis(scene, rng)
        labels[label] += 1
        if m := re.fullmatch(r"there is a (\w+) (\w+)", text):
            assert label == ("entailment" if scene.count(m[2], m[1]) else "contradiction")
        elif m := re.fullmatch(r"the background is (\w+)", text):
            assert label == ("entailment" if m[1] == scene.background else "contradiction")
        elif m := re.fullmatch(r"the (\w+) background is (happy|sad|boring)", text):
            assert label == ("neutral" if m[1] == scene.background else "contradiction")
        elif m := re.fullmatch(r"the (\w+) (\w+) is (happy|sad|boring)", text):
            assert label == ("neutral" if scene.count(m[2], m[1]) else "contradiction")
        else:
            k = 1 if text == "there is one shape" else ["two", "three", "four"].index(text.split()[2]) + 2
            assert label == ("entailment" if k == len(scene.objects) else "contradiction")
    # designed proportions 3/10, 1/5, 1/2 of 600 draws: 180, 120, 300
    assert (
        140 <= labels["entailment"] <= 220 and 85 <= labels["neutral"] <= 155 and 255 <= labels["contradiction"] <= 345
    )


# ---- Hateful Memes ----------------------------------------------------------------------------------------------


def test_hateful_memes_reader_layout_and_unlabelled_test(registry, memes_root):
    for split in ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen"):
        assert (memes_root / f"{split}.jsonl").is_file()
    reader = open_reader(_task(registry, "hateful_memes"), memes_root)
    recs = list(reader.samples("dev_seen"))
    lines = [json.loads(x) for x in (memes_root / "dev_seen.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(8)) and len(lines) == 8
    for r, line in zip(recs, lines):
        assert set(r) == {"index", "text", "text_pair", "image", "label"}
        assert re.fullmatch(r"img/\d{5}\.png", line["img"]) and r["text"] == line["text"]
        assert r["label"] == line["label"]
        # the label is the falsity of the text's claim, read off the picture
        words = r["text"].split()
        if claimed := [b for b in BACKGROUNDS if b in words]:  # white/gray are not shape colours
            assert r["label"] == (0 if claimed[0] == _background(r["image"]) else 1), r["text"]
        else:
            colour = next(c for c in COLOURS if c in words)
            assert r["label"] == (0 if _colour_present(r["image"], colour) else 1), r["text"]
    assert all(r["label"] is None for r in reader.samples("test_seen"))


def test_hateful_memes_need_both_modalities():
    # The text alone: every claimed colour or background is about equally often true and false. The image alone:
    # only the weak designed cue, claims true 65% of the time on white pictures and 35% on gray ones.
    by_word = {w: Counter() for w in (*COLOURS, *BACKGROUNDS)}
    by_background = {b: Counter() for b in BACKGROUNDS}
    for i in range(1200):
        image, text, label = meme("train", i, 0, 32)
        by_word[next(w for w in by_word if w in text.split())][label] += 1
        by_background[_background(image)][label] += 1
    for word, counts in by_word.items():
        assert 0.3 <= counts[1] / (counts[0] + counts[1]) <= 0.7, (word, counts)
    white, gray = (by_background[b][0] / sum(by_background[b].values()) for b in ("white", "gray"))
    assert 0.58 <= white <= 0.72 and 0.28 <= gray <= 0.42, (white, gray)


def test_multimodal_synthetic_is_deterministic(registry, tmp_path, snli_root, memes_root):
    for name, root in (("snli_ve", snli_root), ("hateful_memes", memes_root)):
        n = 12 if name == "snli_ve" else 8
        again = synthetic.write(_task(registry, name), tmp_path / f"{name}-again", n=n, seed=1)
        other = synthetic.write(_task(registry, name), tmp_path / f"{name}-other", n=n, seed=2)
        for f in root.glob("*.jsonl"):
            assert (again / f.name).read_bytes() == f.read_bytes()
        assert any((other / f.name).read_bytes() != f.read_bytes() for f in root.glob("*.jsonl"))


def test_synthetic_scene_claims_use_every_shape_and_colour():
    # A sanity check on the world the claims draw from (absent colours exist for every scene of <= 4 objects).
    seen = Counter()
    for seed in range(100):
        scene = sample_scene(random.Random(seed))
        seen.update((o.colour, o.shape) for o in scene.objects)
        assert len({o.colour for o in scene.objects}) <= 4 < len(COLOURS)
    assert {c for c, _ in seen} == set(COLOURS) and {s for _, s in seen} == set(SHAPES)


# ---- bad input -------------------------------------------------------------------------------------------------


def test_missing_vqa_dataset_names_files_and_source(registry, tmp_path):
    task = registry.task("vqav2")
    with pytest.raises(DataError) as err:
        open_reader(task, dataset_root(task, tmp_path))
    msg = str(err.value)
    assert "v2_OpenEnded_mscoco_val2014_questions.json" in msg and "v2_mscoco_val2014_annotations.json" in msg
    assert "val2014/COCO_val2014_000000000000.jpg" in msg and "visualqa.org" in msg and "--data synthetic" in msg


def test_vqa_missing_image_names_path_and_question(registry, vqa_root, tmp_path):
    root = _copy(vqa_root, tmp_path)
    q = json.loads((root / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"][3]
    assert q["question_id"] % 1000 == 0  # the first question on its image: the one that fails first
    victim = root / "val2014" / f"COCO_val2014_{q['image_id']:012d}.jpg"
    reader = open_reader(_task(registry, "vqav2"), root)
    victim.unlink()  # after the check: reading names the image and the question
    with pytest.raises(DataError, match=re.escape(f"{victim} (question_id {q['question_id']}): image file not found")):
        list(reader.samples("val2014"))
    with pytest.raises(DataError, match=re.escape(f"{victim}: image file missing (1 of the 4 image files that split")):
        open_reader(_task(registry, "vqav2"), root)


def test_vqa_malformed_json_and_question_without_annotation(registry, vqa_root, tmp_path):
    root = _copy(vqa_root, tmp_path)
    ann_file = root / "v2_mscoco_val2014_annotations.json"
    data = json.loads(ann_file.read_text())
    lost = data["annotations"].pop(7)
    ann_file.write_text(json.dumps(data))
    pattern = rf"v2_mscoco_val2014_annotations\.json: no annotation for question_id {lost['question_id']} \("
    with pytest.raises(DataError, match=pattern + r"v2_OpenEnded_mscoco_val2014_questions\.json \[7\]\)"):
        open_reader(_task(registry, "vqav2"), root)  # found by the check, before any work
    shutil.copy(vqa_root / ann_file.name, ann_file)
    q_file = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    q_file.write_text(q_file.read_text()[:-20])
    with pytest.raises(DataError, match=r"v2_OpenEnded_mscoco_val2014_questions\.json: not valid JSON"):
        list(open_reader(_task(registry, "vqav2"), root).samples("val2014"))
    shutil.copy(vqa_root / q_file.name, q_file)
    data["annotations"][0]["answers"] = "yes"
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\.json: annotations\[0\]: key 'answers': expected list"):
        list(open_reader(_task(registry, "vqav2"), root).samples("val2014"))


def test_jsonl_bad_line_and_label_outside_the_set(registry, snli_root, memes_root, tmp_path):
    ve = _copy(snli_root, tmp_path)
    path = ve / "snli_ve_test.jsonl"
    lines = path.read_text().splitlines()
    no_consensus = {**json.loads(lines[1]), "gold_label": "-"}
    path.write_text("\n".join([lines[0], json.dumps(no_consensus), *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"snli_ve_test\.jsonl:2: key 'gold_label': '-' is not a SNLI-VE label"):
        list(open_reader(_task(registry, "snli_ve"), ve).samples("test"))
    path.write_text("\n".join([lines[0], lines[1], lines[2][:-3], *lines[3:]]) + "\n")
    with pytest.raises(DataError, match=r"snli_ve_test\.jsonl:3: not valid JSON"):
        list(open_reader(_task(registry, "snli_ve"), ve).samples("test"))
    hm = _copy(memes_root, tmp_path)
    path = hm / "dev_seen.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:4], re.sub(r'"label": \d', '"label": 2', lines[4]), *lines[5:]]) + "\n")
    with pytest.raises(DataError, match=r"dev_seen\.jsonl:5: key 'label': 2 is not a Hateful Memes label"):
        list(open_reader(_task(registry, "hateful_memes"), hm).samples("dev_seen"))
    path.write_text("\n".join(lines) + "\n")
    victim = hm / json.loads(lines[2])["img"]
    reader = open_reader(_task(registry, "hateful_memes"), hm)
    victim.unlink()
    with pytest.raises(DataError, match=re.escape(f"{victim} (dev_seen.jsonl:3): image file not found")):
        list(reader.samples("dev_seen"))
    with pytest.raises(DataError, match=re.escape(f"{victim}: image file missing (1 of the 8 image files")):
        open_reader(_task(registry, "hateful_memes"), hm)
