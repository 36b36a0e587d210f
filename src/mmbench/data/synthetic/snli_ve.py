"""Synthetic SNLI-VE in the release's JSON-lines layout: hypotheses about a rendered scene, keyed by Flickr30K-style
image ids (`flickr30k_images/<id>.jpg`), the id spelled `Flikr30kID` on most lines and `Flickr30K_ID` on every
fourth, so readers must accept both.

Five hypothesis templates, drawn with equal odds, each true or false of the image (true with probability
`claims.truth_probability`: 0.65 on white backgrounds, 0.35 on gray ones, a weak image-only cue that lets tiny
random-init models start learning the interaction):
- "there is a <colour> <shape>": entailment if the object is in the scene, contradiction if its colour is absent;
- "there are <k> shapes" / "there is one shape": entailment if k is the count, else contradiction;
- "the background is <white|gray>": entailment or contradiction;
- "the <colour> <shape> is happy" (or sad, or boring: unobservable): neutral if the object is in the scene (the
  picture cannot tell), contradiction if it is not (nothing of that kind is there);
- "the <white|gray> background is happy" (...): neutral if that is the background, else contradiction.
Labels are therefore 3/10 entailment, 1/5 neutral, 1/2 contradiction (backgrounds are white or gray with equal
odds). The hypothesis alone fixes only which two labels are possible, at even odds, so it predicts no better than
the majority class (50%); the image alone gives 65% on contradiction-or-not at best and cannot tell entailment
from neutral; telling all three apart needs both. The background templates are the ones tiny models learn first
(see `claims.py`). `sentence1` is a true caption of the scene, as SNLI's premise was.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from mmbench.data.synthetic.claims import DEFAULT_BIAS, absent_object, other_background, truth_probability
from mmbench.data.synthetic.scene import Scene, captions, number_word, render, sample_scene

FLICKR_ID_BASE = {"train": 2000000000, "dev": 3000000000, "test": 4000000000}
HYPOTHESES_PER_IMAGE = 3
# Properties a picture of flat shapes cannot show. Words from the tiny tokenizers' vocabulary (like every template
# here), so that tiny models see one token per word.
UNOBSERVABLE = ("is happy", "is sad", "is boring")


def hypothesis(scene: Scene, rng: random.Random, bias: float = DEFAULT_BIAS) -> tuple[str, str]:
    """(hypothesis, gold label) for one scene: a template, then true or false of the image."""
    template = rng.randrange(5)
    true = rng.random() < truth_probability(scene, bias)
    if template == 0:
        if true:
            o = rng.choice(scene.objects)
            return f"there is a {o.colour} {o.shape}", "entailment"
        colour, shape = absent_object(scene, rng)
        return f"there is a {colour} {shape}", "contradiction"
    if template == 1:
        n = len(scene.objects)
        k = n if true else rng.choice([m for m in range(1, 5) if m != n])
        text = "there is one shape" if k == 1 else f"there are {number_word(k)} shapes"
        return text, "entailment" if true else "contradiction"
    background = scene.background if true else other_background(scene)
    if template == 2:
        return f"the background is {background}", "entailment" if true else "contradiction"
    prop = rng.choice(UNOBSERVABLE)
    if template == 3:
        return f"the {background} background {prop}", "neutral" if true else "contradiction"
    if true:
        o = rng.choice(scene.objects)
        return f"the {o.colour} {o.shape} {prop}", "neutral"
    colour, shape = absent_object(scene, rng)
    return f"the {colour} {shape} {prop}", "contradiction"


def write_snli_ve(
    out: Path,
    n: int,
    seed: int,
    n_train: int | None = None,
    image_size: int = 64,
    bias: float = DEFAULT_BIAS,
    **_: Any,
) -> None:
    """`snli_ve_{train,dev,test}.jsonl` with `n_train` (default 4n), `n` and `n` pairs + `flickr30k_images/`."""
    n_train = 4 * n if n_train is None else n_train
    images = out / "flickr30k_images"
    images.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("dev", n), ("test", n)):
        lines = []
        for i in range(-(-count // HYPOTHESES_PER_IMAGE)):
            rng = random.Random(f"{seed}/snli_ve/{split}/{i}")
            scene = sample_scene(rng)
            flickr_id = str(FLICKR_ID_BASE[split] + i)
            render(scene, image_size, jitter=rng).save(images / f"{flickr_id}.jpg", format="JPEG", quality=95)
            premise = captions(scene, rng, 1)[0]
            for k in range(HYPOTHESES_PER_IMAGE):
                if len(lines) == count:
                    break
                text, label = hypothesis(scene, rng, bias)
                id_key = "Flickr30K_ID" if len(lines) % 4 == 3 else "Flikr30kID"
                lines.append(
                    {
                        "annotator_labels": [label],
                        "captionID": f"{flickr_id}.jpg#{k}",
                        "gold_label": label,
                        "pairID": f"{flickr_id}.jpg#{k}r1{label[0]}",
                        "sentence1": premise,
                        "sentence2": text,
                        id_key: flickr_id,
                    }
                )
        text = "".join(json.dumps(line) + "\n" for line in lines)
        (out / f"snli_ve_{split}.jsonl").write_text(text)
