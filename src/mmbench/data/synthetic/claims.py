"""Facts about a scene that the multimodal writers turn into questions, hypotheses and meme texts.

Everything here is decided by what the rendered image shows (colours, shapes, grid cells, counts), so that every
answer and label can be read off the image. Claims about absent objects use a colour the scene does not contain:
then "is it there?" needs colour presence only, not the harder colour-shape binding, which a tiny model learns in
a few hundred steps at 32-64 px.
"""

from __future__ import annotations

import random

from mmbench.data.synthetic.scene import COLOURS, SHAPES, Obj, Scene


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
