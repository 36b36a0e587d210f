"""Real-shape VQAv2, SNLI-VE, Hateful Memes and GLUE (see `real_shape` for what "real shape" means).

Questions, hypotheses, meme texts and GLUE rows come from the scene-world writers (the same generators, so every
label stays true of its scene); what changes is the shape around them: COCO-sized JPEGs under the official VQAv2
names, Flickr-sized JPEGs for SNLI-VE, memes as PNGs of many sizes, and GLUE pairs whose first text has a long
tail (every fourth row ~150 words, every fourth from row 1 on ~600 words: past CLIP's 77 positions and FLAVA's 512,
so that truncation at each model's limit is exercised; row 1, so that a run capped at two rows meets one).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from mmbench.data.synthetic import glue as scene_glue
from mmbench.data.synthetic.claims import DEFAULT_BIAS
from mmbench.data.synthetic.hateful_memes import ID_BASE as MEME_ID_BASE
from mmbench.data.synthetic.hateful_memes import LABELLED, meme
from mmbench.data.synthetic.real_shape import COCO, FLICKR, MEMES, encode, picture
from mmbench.data.synthetic.scene import captions, sample_scene
from mmbench.data.synthetic.snli_ve import FLICKR_ID_BASE, HYPOTHESES_PER_IMAGE, hypothesis
from mmbench.data.synthetic.text import KINDS, STATEMENT_STYLES, fact_of, statement

# The scene-world VQA writer's own pieces (questions with their 10 annotator answers, the JSON envelope).
from mmbench.data.synthetic.vqa import QUESTIONS_PER_IMAGE, _dump, _image_questions, _Style

# ---- VQAv2 ---------------------------------------------------------------------------------------------------


def _vqa_split(out: Path, split: str, n: int, seed: int) -> tuple[list[dict], list[dict], list[list[dict]]]:
    """n questions of `split` (3 per image) with their annotations, and the questions grouped by image; writes the
    images as `<split>/COCO_<split>_<id:012d>.jpg` at COCO's sizes."""
    style = _Style(image_size=8, noise=0.1, word_rate=0.03, bias=DEFAULT_BIAS)  # the 8-px image is not used
    questions: list[dict] = []
    annotations: list[dict] = []
    per_image: list[list[dict]] = []
    for i in range(-(-n // QUESTIONS_PER_IMAGE)):
        _, image_id, items = _image_questions(split, i, seed, style)
        # The scene those questions are about: the first draw of the same stream.
        scene = sample_scene(random.Random(f"{seed}/vqa/{split}/{i}"))
        rng = random.Random(f"{seed}/real/vqa/{split}/{i}")
        path = out / split / f"COCO_{split}_{image_id:012d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(picture(scene, rng.choice(COCO), rng), "jpg"))
        kept = items[: n - len(questions)]
        questions += [q for q, _ in kept]
        annotations += [a for _, a in kept]
        per_image.append([q for q, _ in kept])
    return questions, annotations, per_image


def write_vqa(out: Path, n: int, seed: int, **_: Any) -> None:
    """train2014 and val2014 (questions + annotations), test2015 questions, and test-dev2015 = the questions of the
    first half of the test2015 images (whose files stay in `test2015/`, as in the release); n questions each."""
    for split in ("train2014", "val2014"):
        questions, annotations, _ = _vqa_split(out, split, n, seed)
        _dump(out / f"v2_OpenEnded_mscoco_{split}_questions.json", split, "questions", questions)
        _dump(out / f"v2_mscoco_{split}_annotations.json", split, "annotations", annotations)
    questions, _, per_image = _vqa_split(out, "test2015", n, seed)
    _dump(out / "v2_OpenEnded_mscoco_test2015_questions.json", "test2015", "questions", questions)
    dev = [q for group in per_image[: max(1, len(per_image) // 2)] for q in group]
    _dump(out / "v2_OpenEnded_mscoco_test-dev2015_questions.json", "test-dev2015", "questions", dev)


# ---- SNLI-VE -------------------------------------------------------------------------------------------------


def write_snli_ve(out: Path, n: int, seed: int, **_: Any) -> None:
    """`snli_ve_{train,dev,test}.jsonl`, n pairs each (3 hypotheses per image), `flickr30k_images/<id>.jpg` at
    Flickr's sizes; the image key spelled `Flikr30kID` as in the release."""
    folder = out / "flickr30k_images"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        lines: list[str] = []
        for i in range(-(-n // HYPOTHESES_PER_IMAGE)):
            rng = random.Random(f"{seed}/real/snli_ve/{split}/{i}")
            scene = sample_scene(rng)
            flickr_id = str(FLICKR_ID_BASE[split] + i)
            (folder / f"{flickr_id}.jpg").write_bytes(encode(picture(scene, rng.choice(FLICKR), rng), "jpg"))
            premise = captions(scene, rng, 1)[0]
            for k in range(min(HYPOTHESES_PER_IMAGE, n - len(lines))):
                text, label = hypothesis(scene, rng)
                pair = f"{flickr_id}.jpg#{k}"
                line = {"annotator_labels": [label], "captionID": pair, "gold_label": label}
                line.update(pairID=f"{pair}r1{label[0]}", sentence1=premise, sentence2=text, Flikr30kID=flickr_id)
                lines.append(json.dumps(line))
        (out / f"snli_ve_{split}.jsonl").write_text("".join(line + "\n" for line in lines))


# ---- Hateful Memes -------------------------------------------------------------------------------------------


def write_hateful_memes(out: Path, n: int, seed: int, **_: Any) -> None:
    """`{train,dev_seen,dev_unseen,test_seen,test_unseen}.jsonl`, n memes each (no labels in the test files, as in
    the phase-1 release), `img/<id>.png` at many sizes."""
    (out / "img").mkdir(parents=True, exist_ok=True)
    for split, base in MEME_ID_BASE.items():
        lines = []
        for i in range(n):
            _, text, label = meme(split, i, seed, image_size=8)  # the 8-px image is not used
            scene = sample_scene(random.Random(f"{seed}/hateful_memes/{split}/{i}"))  # the scene the text is about
            rng = random.Random(f"{seed}/real/hateful_memes/{split}/{i}")
            name = f"img/{base + i:05d}.png"
            (out / name).write_bytes(encode(picture(scene, rng.choice(MEMES), rng), "png"))
            line: dict[str, Any] = {"id": base + i, "img": name}
            if split in LABELLED:
                line["label"] = label
            line["text"] = text
            lines.append(json.dumps(line))
        (out / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))


# ---- GLUE ----------------------------------------------------------------------------------------------------


def long_text(words: int, rng: random.Random) -> str:
    """About `words` words of true-of-some-scene statements (the tiny tokenizers' vocabulary: ~1 token a word)."""
    sentences: list[str] = []
    total = 0
    while total < words:
        scene = sample_scene(rng)
        fact = fact_of(rng.choice(scene.objects), rng.choice(KINDS), scene)
        sentences.append(statement(fact, rng.randrange(STATEMENT_STYLES)))
        total += len(sentences[-1].split()) + 1
    return " . ".join(sentences)


def write_glue(out: Path, n: int, seed: int, config: str, **_: Any) -> None:
    """Every split of `config` in the `nyu-mll/glue` parquet layout (MNLI: validation_matched/_mismatched and
    test_matched/_mismatched), n rows each, hidden test labels (-1), and for sentence-pair configs the long tail of
    first texts described above."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if config not in scene_glue.CONFIGS:
        raise ValueError(f"real-shape glue: unknown config {config!r} (have: {', '.join(scene_glue.CONFIGS)})")
    columns, regression = scene_glue.CONFIGS[config]
    folder = out / config
    folder.mkdir(parents=True, exist_ok=True)
    for split in scene_glue.splits_of(config):
        rows = scene_glue.examples(config, split, n, seed)
        first = [r[0] for r in rows]
        if len(columns) == 2:
            for r in range(len(rows)):
                extra = 600 if r % 4 == 1 else 150 if r % 4 == 3 else 0
                if extra:
                    rng = random.Random(f"{seed}/real/glue/{config}/{split}/{r}")
                    first[r] = f"{long_text(extra, rng)} . {first[r]}"
        data: dict[str, Any] = {columns[0]: first}
        if len(columns) == 2:
            data[columns[1]] = [r[1] for r in rows]
        labels = [-1 if split.startswith("test") else r[2] for r in rows]
        data["label"] = pa.array(labels, pa.float32() if regression else pa.int64())
        data["idx"] = pa.array(range(n), pa.int32())
        pq.write_table(pa.table(data), folder / f"{split}-00000-of-00001.parquet")
