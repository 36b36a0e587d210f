"""Synthetic VQAv2 in the official files: questions about the rendered scene, 10 noisy annotator answers each.

Per image, three questions (qid = image_id * 1000 + k, as in VQAv2), one of each answer type:
- number: "how many shapes are there?" (1-4) or "how many <colour> shapes are there?" (1-3); answers in digits,
  as the annotation files have them, question type "how many";
- other: "what color is the shape at the <position>?", "what color is the <shape>?" (when it is the only one) or,
  for a third of them, "what color is the background?"; one of 6 colours or white/gray, type "what color is the";
- yes/no: "is there a <colour> <shape>?" (type "is there a") or, for a third, "is the background <white|gray>?"
  (type "is the"); "yes" with probability `claims.truth_probability` (0.65 on white backgrounds, 0.35 on gray).
The background questions are the ones tiny models learn first (see `claims.py`).
Each of the 10 annotators answers wrongly with probability `noise` (count off by one, another colour, the other
of yes/no) and writes a count as a number word ("two") with probability `word_rate`; `multiple_choice_answer` is
the most frequent answer. So the answer space is 14 classes, every question has a majority answer read off the
image, and the references carry the disagreement that the leave-one-out metric and soft targets are made for.

Splits: train2014 (`n_train` questions), val2014 (`n`), test2015 (`n_test`, questions only) and test-dev2015 (the
questions of the first half of the test2015 images, whose files stay in `test2015/`, as in the real release).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmbench.data.synthetic.claims import (
    DEFAULT_BIAS,
    absent_object,
    other_background,
    position,
    truth_probability,
    unique_shape,
)
from mmbench.data.synthetic.scene import COLOURS, Scene, number_word, render, sample_scene

IMAGE_ID_BASE = {"train2014": 100000, "val2014": 300000, "test2015": 500000}
QUESTIONS_PER_IMAGE = 3
_INFO = {"description": "mmbench synthetic VQAv2 (procedural scenes)", "version": "2.0", "year": 2017}


def _question(scene: Scene, kind: str, rng: random.Random, bias: float) -> tuple[str, str, str, list[str]]:
    """(question, true answer, question type, the wrong answers a careless annotator picks from) of one kind."""
    if kind == "number":
        if rng.random() < 0.7:
            truth = len(scene.objects)
            question = "how many shapes are there?"
        else:
            colour = rng.choice([o.colour for o in scene.objects])
            truth = scene.count(colour=colour)
            question = f"how many {colour} shapes are there?"
        return question, str(truth), "how many", [str(max(0, truth - 1)), str(truth + 1)]  # off by one
    if kind == "other":
        if rng.random() < 1 / 3:
            return "what color is the background?", scene.background, "what color is the", [other_background(scene)]
        o = rng.choice(scene.objects)
        wrong = [c for c in COLOURS if c != o.colour]
        if unique_shape(scene, o) and rng.random() < 0.5:
            return f"what color is the {o.shape}?", o.colour, "what color is the", wrong
        return f"what color is the shape at the {position(o)}?", o.colour, "what color is the", wrong
    true = rng.random() < truth_probability(scene, bias)
    answer, wrong = ("yes", ["no"]) if true else ("no", ["yes"])
    if rng.random() < 1 / 3:
        background = scene.background if true else other_background(scene)
        return f"is the background {background}?", answer, "is the", wrong
    if true:
        o = rng.choice(scene.objects)
        return f"is there a {o.colour} {o.shape}?", answer, "is there a", wrong
    colour, shape = absent_object(scene, rng)
    return f"is there a {colour} {shape}?", answer, "is there a", wrong


@dataclass(frozen=True)
class _Style:
    """How the images and the annotators behave (the writer's options)."""

    image_size: int
    noise: float  # probability that an annotator answers wrongly
    word_rate: float  # probability that a count is written as a word
    bias: float  # see claims.truth_probability


def _annotator(truth: str, wrong: list[str], number: bool, rng: random.Random, style: _Style) -> str:
    answer = rng.choice(wrong) if rng.random() < style.noise else truth
    if number and rng.random() < style.word_rate:
        answer = number_word(int(answer))  # a raw answer the annotation files were not normalised to
    return answer


def _image_questions(split: str, i: int, seed: int, style: _Style):
    """The image and its questions (with annotations) for image `i` of `split`; depends on (seed, split, i) only."""
    rng = random.Random(f"{seed}/vqa/{split}/{i}")
    scene = sample_scene(rng)
    image = render(scene, style.image_size, jitter=rng)
    image_id = IMAGE_ID_BASE[split] + i
    kinds = ["number", "other", "yes/no"]
    items = []
    for k, kind in enumerate(kinds):
        question, truth, qtype, wrong = _question(scene, kind, rng, style.bias)
        qid = image_id * 1000 + k
        answers = [_annotator(truth, wrong, kind == "number", rng, style) for _ in range(10)]
        ann = {
            "question_type": qtype,
            "multiple_choice_answer": Counter(answers).most_common(1)[0][0],
            "answers": [
                {"answer": a, "answer_confidence": "yes" if a == truth else "maybe", "answer_id": j + 1}
                for j, a in enumerate(answers)
            ],
            "image_id": image_id,
            "answer_type": kind,
            "question_id": qid,
        }
        items.append(({"image_id": image_id, "question": question, "question_id": qid}, ann))
    return image, image_id, items


def _write_split(out: Path, split: str, n_questions: int, seed: int, style: _Style):
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    questions, annotations, per_image = [], [], []
    n_images = -(-n_questions // QUESTIONS_PER_IMAGE)
    for i in range(n_images):
        image, image_id, items = _image_questions(split, i, seed, style)
        image.save(folder / f"COCO_{split}_{image_id:012d}.jpg", format="JPEG", quality=95)
        per_image.append(items)
        for q, ann in items:
            if len(questions) < n_questions:
                questions.append(q)
                annotations.append(ann)
    return questions, annotations, per_image


def _dump(path: Path, split: str, key: str, items: list[dict]) -> None:
    body: dict[str, Any] = {"info": _INFO, "license": {"name": "synthetic", "url": ""}, "data_subtype": split}
    if key == "questions":
        body.update(task_type="Open-Ended", data_type="mscoco")
    else:
        body["data_type"] = "mscoco"
    body[key] = items
    path.write_text(json.dumps(body))


def write_vqa(
    out: Path,
    n: int,
    seed: int,
    n_train: int | None = None,
    n_test: int | None = None,
    image_size: int = 64,
    noise: float = 0.1,
    word_rate: float = 0.03,
    bias: float = DEFAULT_BIAS,
    **_: Any,
) -> None:
    """`n` val2014 questions, `n_train` (default 4n) train2014 questions, `n_test` (default n/2) test2015 ones."""
    n_train = 4 * n if n_train is None else n_train
    n_test = max(QUESTIONS_PER_IMAGE, n // 2) if n_test is None else n_test
    style = _Style(image_size, noise, word_rate, bias)
    for split, count in (("train2014", n_train), ("val2014", n)):
        questions, annotations, _ = _write_split(out, split, count, seed, style)
        _dump(out / f"v2_OpenEnded_mscoco_{split}_questions.json", split, "questions", questions)
        _dump(out / f"v2_mscoco_{split}_annotations.json", split, "annotations", annotations)
    questions, _, per_image = _write_split(out, "test2015", n_test, seed, style)
    _dump(out / "v2_OpenEnded_mscoco_test2015_questions.json", "test2015", "questions", questions)
    dev = [q for items in per_image[: max(1, len(per_image) // 2)] for q, _ in items if q in questions]
    _dump(out / "v2_OpenEnded_mscoco_test-dev2015_questions.json", "test-dev2015", "questions", dev)
