"""The procedural scene world behind every synthetic dataset: coloured shapes on a 3x3 grid.

A `Scene` is pure data (shapes, colours, sizes, grid cells, background), sampled deterministically from a seed
and rendered with PIL. Every synthetic format draws on the same world, so that captions, questions, entailment
pairs, counts and class labels are all *true of the image*: tasks built from it are learnable, which is what lets
the tests show that fine-tuning beats chance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 99, 235),
    "yellow": (234, 200, 20),
    "purple": (140, 60, 200),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.11, "large": 0.16}  # radius as a fraction of the image side
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (245, 245, 245), "gray": (150, 150, 150)}
ROWS = ("top", "middle", "bottom")
COLS = ("left", "middle", "right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major on the 3x3 grid

    @property
    def row(self) -> str:
        return ROWS[self.cell // 3]

    @property
    def col(self) -> str:
        return COLS[self.cell % 3]

    def phrase(self, with_size: bool = False) -> str:
        return f"{self.size + ' ' if with_size else ''}{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str

    def count(self, shape: str | None = None, colour: str | None = None) -> int:
        return sum((shape is None or o.shape == shape) and (colour is None or o.colour == colour) for o in self.objects)


def sample_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 4, **fixed: str) -> Scene:
    """A random scene; `fixed` pins attributes of the first object (e.g. shape="circle") for class-conditional
    datasets, and `n_objects` may be given as `min_objects == max_objects`."""
    n = rng.randint(min_objects, max_objects)
    cells = rng.sample(range(9), n)
    objects = []
    for i, cell in enumerate(cells):
        attrs = {
            "shape": rng.choice(SHAPES),
            "colour": rng.choice(list(COLOURS)),
            "size": rng.choice(list(SIZES)),
        }
        if i == 0:
            attrs.update(fixed)
        objects.append(Obj(cell=cell, **attrs))
    return Scene(tuple(objects), rng.choice(list(BACKGROUNDS)))


def render(scene: Scene, size: int = 64, jitter: random.Random | None = None) -> Image.Image:
    """Draw the scene; `jitter` moves shapes a little inside their cells so images of one caption differ."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for o in scene.objects:
        dx, dy = (jitter.uniform(-0.12, 0.12) * cell, jitter.uniform(-0.12, 0.12) * cell) if jitter else (0.0, 0.0)
        cx = (o.cell % 3 + 0.5) * cell + dx
        cy = (o.cell // 3 + 0.5) * cell + dy
        r = SIZES[o.size] * size
        colour = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif o.shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def captions(scene: Scene, rng: random.Random, k: int = 5) -> list[str]:
    """`k` different true descriptions of the scene, in the style of COCO/Flickr captions."""
    objs = list(scene.objects)
    first = objs[0]
    n = len(objs)
    plural = "shape" if n == 1 else "shapes"
    listing = " and ".join(f"a {o.phrase()}" for o in objs)
    candidates = [
        f"{listing} on a {scene.background} background",
        f"{number_word(n)} {plural} on a {scene.background} background",
        f"a {first.phrase(with_size=True)} at the {first.row} {first.col}",
        f"a picture with {listing}",
        f"{number_word(n)} coloured {plural}, one of them a {first.phrase()}",
    ]
    for o in objs[1:]:
        candidates.append(f"a {o.phrase(with_size=True)} in the {o.row} {o.col} of the image")
    for colour in sorted({o.colour for o in objs}):
        c = scene.count(colour=colour)
        candidates.append(f"{number_word(c)} {colour} {'shape' if c == 1 else 'shapes'} in the picture")
    head, tail = candidates[:2], candidates[2:]
    rng.shuffle(tail)
    out = (head + tail)[:k]
    while len(out) < k:  # tiny scenes may have fewer distinct sentences than k
        out.append(f"{out[len(out) % len(head)]} in a photo")
    return out
