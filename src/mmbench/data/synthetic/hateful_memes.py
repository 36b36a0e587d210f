"""Synthetic Hateful Memes in the challenge's layout: `{train,dev_seen,dev_unseen,test_seen,test_unseen}.jsonl` +
`img/<id>.png`, where the label depends on the image-text *combination*.

A meme's text makes a claim about its picture, either that a colour is in it ("so many red things here") or what
its background is ("love the gray background"), with equal odds; the meme is "hateful" (label 1) exactly when
the claim is false of its image. Every claim wording is equally often true and false, so the text alone says
(almost) nothing; the image alone gives only the weak cue of `claims.truth_probability` (claims about white
pictures are true 65% of the time, about gray ones 35%; image-only AUC about 0.6), which is what lets tiny
random-init models leave the interaction's saddle. Only the combination decides. Test files carry no labels,
like the challenge's phase-1 test sets.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from mmbench.data.synthetic.claims import (
    DEFAULT_BIAS,
    absent_colours,
    other_background,
    present_colours,
    truth_probability,
)
from mmbench.data.synthetic.scene import render, sample_scene

# Words from the tiny tokenizers' vocabulary, so that tiny models see one token per word.
TEMPLATES = (
    "love the {c} in this picture",
    "so many {c} things here",
    "{c} is the best colour in this image",
    "what a nice {c} scene",
)
BACKGROUND_TEMPLATES = ("love the {b} background", "what a nice {b} picture")
# First meme id of each split (5-digit, as in the real release); labelled splits and their default sizes.
ID_BASE = {"train": 10000, "dev_seen": 40000, "dev_unseen": 50000, "test_seen": 60000, "test_unseen": 70000}
LABELLED = ("train", "dev_seen", "dev_unseen")


def meme(split: str, i: int, seed: int, image_size: int, bias: float = DEFAULT_BIAS) -> tuple[Any, str, int]:
    """Meme `i` of `split`: (image, text, label); depends on (seed, split, i) only."""
    rng = random.Random(f"{seed}/hateful_memes/{split}/{i}")
    scene = sample_scene(rng)
    image = render(scene, image_size, jitter=rng)
    true = rng.random() < truth_probability(scene, bias)
    if rng.random() < 0.5:
        background = scene.background if true else other_background(scene)
        text = rng.choice(BACKGROUND_TEMPLATES).format(b=background)
    else:
        colour = rng.choice(present_colours(scene) if true else absent_colours(scene))
        text = rng.choice(TEMPLATES).format(c=colour)
    return image, text, int(not true)


def write_hateful_memes(
    out: Path,
    n: int,
    seed: int,
    n_train: int | None = None,
    image_size: int = 64,
    bias: float = DEFAULT_BIAS,
    **_: Any,
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
    (out / "img").mkdir(parents=True, exist_ok=True)
    for split, count in sizes.items():
        lines = []
        for i in range(count):
            image, text, label = meme(split, i, seed, image_size, bias)
            meme_id = ID_BASE[split] + i
            name = f"img/{meme_id:05d}.png"
            image.save(out / name, format="PNG")
            line: dict[str, Any] = {"id": meme_id, "img": name}
            if split in LABELLED:
                line["label"] = label
            line["text"] = text
            lines.append(line)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
