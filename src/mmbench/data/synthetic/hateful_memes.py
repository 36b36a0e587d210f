"""Synthetic Hateful Memes in the challenge's layout: `{train,dev_seen,dev_unseen,test_seen,test_unseen}.jsonl` +
`img/<id>.png`, where the label depends on the image-text *combination*.

A meme's text claims that a colour is in the picture ("so many red things here"); the meme is "hateful"
(label 1) exactly when the claim is false of its image. Memes come in pairs built on one scene, as the real
dataset's benign confounders do: the same picture once with a true claim (label 0) and once with a false one
(label 1). So every image appears with both labels (the image alone says nothing), the claimed colour is about
equally often present or absent (the text alone says nothing), and the label is "is the named colour in the
picture?", which a small fusion model learns from colour presence. Test files carry no labels, like the
challenge's phase-1 test sets.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from mmbench.data.synthetic.claims import absent_colours, present_colours
from mmbench.data.synthetic.scene import render, sample_scene

# Words from the tiny tokenizers' vocabulary, so that tiny models see one token per word.
TEMPLATES = (
    "love the {c} in this picture",
    "so many {c} things here",
    "{c} is the best colour in this image",
    "what a nice {c} scene",
)
# First meme id of each split (5-digit, as in the real release); labelled splits and their default sizes.
ID_BASE = {"train": 10000, "dev_seen": 40000, "dev_unseen": 50000, "test_seen": 60000, "test_unseen": 70000}
LABELLED = ("train", "dev_seen", "dev_unseen")


def meme_pair(split: str, i: int, seed: int, image_size: int):
    """The scene image and its two memes (text, label): a true claim (0) and a false one (1), in random order."""
    rng = random.Random(f"{seed}/hateful_memes/{split}/{i}")
    scene = sample_scene(rng)
    image = render(scene, image_size, jitter=rng)
    memes = [
        (rng.choice(TEMPLATES).format(c=rng.choice(present_colours(scene))), 0),
        (rng.choice(TEMPLATES).format(c=rng.choice(absent_colours(scene))), 1),
    ]
    rng.shuffle(memes)
    return image, memes


def write_hateful_memes(
    out: Path, n: int, seed: int, n_train: int | None = None, image_size: int = 64, **_: Any
) -> None:
    """`n` memes in dev_seen and test_seen, n/2 in dev_unseen and test_unseen, `n_train` (default 4n) in train."""
    n_train = 4 * n if n_train is None else n_train
    sizes = {
        "train": n_train,
        "dev_seen": n,
        "dev_unseen": max(2, n // 2),
        "test_seen": n,
        "test_unseen": max(2, n // 2),
    }
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    for split, count in sizes.items():
        lines = []
        for i in range(-(-count // 2)):
            image, memes = meme_pair(split, i, seed, image_size)
            for text, label in memes[: count - len(lines)]:
                meme_id = ID_BASE[split] + len(lines)
                name = f"img/{meme_id:05d}.png"
                image.save(out / name, format="PNG")
                line: dict[str, Any] = {"id": meme_id, "img": name}
                if split in LABELLED:
                    line["label"] = label
                line["text"] = text
                lines.append(line)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
