"""Facts about a scene that the multimodal writers turn into questions, hypotheses and meme texts.

Everything here is decided by what the rendered image shows (colours, shapes, grid cells, counts, background), so
that every answer and label can be read off the image. Claims about absent objects use a colour the scene does not
contain: then "is it there?" needs colour presence only, not the harder colour-shape binding.

Why the background and the `bias` (measured with the random-init flava-tiny / clip-tiny at 32 px, batch 32):
- Random image features carry the background shade (linear probe ~0.9) but barely the presence of one small
  coloured shape (~0.75 against a 0.65 majority). Memes whose claims were about object colours only stayed at
  chance AUC after 1,000 steps; with half of the claims about the background they learned, in some runs.
- An interaction with *no* signal in either modality alone is a saddle that training leaves only by luck. A weak
  image-only cue removes the luck: claims are true with probability 0.5 + `bias` on white backgrounds and
  0.5 - `bias` on gray ones (`truth_probability`), which pulls the image tower towards the background first.
With bias 0.15 and the tasks' synthetic schedule (1,000 steps, lr 2e-4): Hateful Memes ROC-AUC 0.90 (image alone
~0.60, text alone ~0.55), SNLI-VE accuracy 0.77 (majority class 0.50), VQA accuracy 0.62-0.66 (the question alone
0.53), for both models. Real datasets have unimodal cues too; the labels still need both modalities.
"""

from __future__ import annotations

import random

from mmbench.data.synthetic.scene import BACKGROUNDS, COLOURS, SHAPES, Obj, Scene

DEFAULT_BIAS = 0.15


def truth_probability(scene: Scene, bias: float = DEFAULT_BIAS) -> float:
    """How likely a generated claim about `scene` is true: the weak image-only cue described above."""
    return 0.5 + bias if scene.background == "white" else 0.5 - bias


def position(o: Obj) -> str:
    """Where an object sits, in words: "top left", "bottom middle", "center"."""
    return "center" if (o.row, o.col) == ("middle", "middle") else f"{o.row} {o.col}"


def present_colours(scene: Scene) -> list[str]:
    return sorted({o.colour for o in scene.objects})


def absent_colours(scene: Scene) -> list[str]:
    present = set(present_colours(scene))
    return [c for c in COLOURS if c not in present]


def absent_object(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """(colour, shape) of an object that is certainly not in the scene (its colour is absent)."""
    return rng.choice(absent_colours(scene)), rng.choice(SHAPES)


def unique_shape(scene: Scene, o: Obj) -> bool:
    """Is `o` the only object of its shape (so that "the <shape>" names it)?"""
    return scene.count(shape=o.shape) == 1


def other_background(scene: Scene) -> str:
    """The background the scene does not have."""
    return next(b for b in BACKGROUNDS if b != scene.background)
