"""Synthetic image classification in the two classification formats: CLIP_benchmark WebDataset and image folder.

Every label is a true, visible property of the scene (`LABELS`): attributes of a single object (colour, shape,
size, grid row or cell), the background, or the number of objects (CLEVR counts: 3..9 objects, label = n - 3).
Attributes the label does not name vary, except where noted in `_plain`.
Sample i of a split has label `i % K` (balanced) and its own seeded scene, so both formats written with the same
seed hold the same images and labels.
"""

from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mmbench.data.synthetic.scene import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene, number_word, render, sample_scene
from mmbench.errors import ConfigError


@dataclass(frozen=True)
class LabelKind:
    classnames: tuple[str, ...]
    scene: Callable[[random.Random, int], Scene]  # (rng, label) -> a scene whose label is `label`


def _one_object(rng: random.Random, **fixed: str) -> Scene:
    # A single object: "the colour of the object" is then a property of the image, not of a hidden sampling order.
    return sample_scene(rng, 1, 1, **fixed)


def _plain(scene: Scene, **fixed: str) -> Scene:
    """On a white background, every object with `fixed` attributes. Used where the label is a small part of the
    image (shape, position, count): the random-weight tiny presets, whose features are close to an average over
    patches, cannot see past a varying background there, and the tests need learnable tasks."""
    objects = tuple(dataclasses.replace(o, **fixed) for o in scene.objects)
    return dataclasses.replace(scene, objects=objects, background="white")


def _large_at(rng: random.Random, cell: int) -> Scene:
    scene = _plain(_one_object(rng), size="large")
    return dataclasses.replace(scene, objects=(dataclasses.replace(scene.objects[0], cell=cell),))


_PAIRS = [(c, s) for s in SHAPES for c in COLOURS]  # shape_colour class i = _PAIRS[i]

LABELS: dict[str, LabelKind] = {
    "colour": LabelKind(tuple(COLOURS), lambda rng, y: _one_object(rng, colour=list(COLOURS)[y])),
    "shape": LabelKind(SHAPES, lambda rng, y: _plain(_one_object(rng, shape=SHAPES[y]), size="large")),
    "shape_colour": LabelKind(
        tuple(f"{c} {s}" for c, s in _PAIRS),
        lambda rng, y: _plain(_one_object(rng, colour=_PAIRS[y][0], shape=_PAIRS[y][1]), size="large"),
    ),
    "size": LabelKind(tuple(SIZES), lambda rng, y: _plain(_one_object(rng, size=list(SIZES)[y]))),
    "background": LabelKind(
        tuple(BACKGROUNDS), lambda rng, y: dataclasses.replace(sample_scene(rng), background=list(BACKGROUNDS)[y])
    ),
    "row": LabelKind(("top", "middle", "bottom"), lambda rng, y: _large_at(rng, 3 * y + rng.randrange(3))),
    "cell": LabelKind(tuple(f"cell {i}" for i in range(9)), lambda rng, y: _large_at(rng, y)),
    # CLEVR counts: 3..9 objects (the 3x3 grid holds at most 9), label = n - 3, class names in label order.
    "count": LabelKind(
        tuple(number_word(n) for n in range(3, 10)), lambda rng, y: _plain(sample_scene(rng, y + 3, y + 3))
    ),
    "count_small": LabelKind(
        tuple(number_word(n) for n in range(1, 5)), lambda rng, y: _plain(sample_scene(rng, y + 1, y + 1), size="large")
    ),
}


def label_kind(label: str) -> LabelKind:
    if label not in LABELS:
        raise ConfigError(f"synthetic classification label {label!r} is not one of {', '.join(LABELS)}")
    return LABELS[label]


def _split_sizes(split: str, n: int, n_train: int, n_val: int) -> dict[str, int]:
    sizes = {"train": n_train, "val": n_val, split: n}
    return {name: k for name, k in sizes.items() if k > 0}


def _samples(kind: LabelKind, seed: int, split: str, n: int, image_size: int) -> list[tuple[Image.Image, int]]:
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}/{split}/{i}")
        label = i % len(kind.classnames)
        out.append((render(kind.scene(rng, label), image_size, jitter=rng), label))
    return out


def _encode(image: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    if ext == "webp":
        image.save(buf, format="WEBP", lossless=True)
    elif ext == "png":
        image.save(buf, format="PNG")
    else:
        image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_wds_classification(
    out: Path,
    n: int,
    seed: int,
    split: str = "test",
    n_train: int = 128,
    n_val: int = 0,
    label: str = "colour",
    image_size: int = 64,
    image_ext: str = "webp",
    samples_per_shard: int = 64,
    **_: Any,
) -> None:
    """`<out>/<split>/{nshards.txt, 0.tar, ...}` for train, val (when `n_val` > 0) and the test split, with members
    `s%07d.<image_ext>` + `s%07d.cls`, and `<out>/classnames.txt`, as in the `clip-benchmark/wds_*` repos."""
    import webdataset as wds

    kind = label_kind(label)
    for name, size in _split_sizes(split, n, n_train, n_val).items():
        split_dir = out / name
        split_dir.mkdir(parents=True, exist_ok=True)
        samples = _samples(kind, seed, name, size, image_size)
        shards = [samples[i : i + samples_per_shard] for i in range(0, size, samples_per_shard)]
        for s, shard in enumerate(shards):
            with wds.TarWriter(str(split_dir / f"{s}.tar")) as sink:
                for j, (image, y) in enumerate(shard):
                    key = f"s{s * samples_per_shard + j:07d}"
                    sink.write({"__key__": key, image_ext: _encode(image, image_ext), "cls": str(y).encode()})
        (split_dir / "nshards.txt").write_text(f"{len(shards)}\n")
    (out / "classnames.txt").write_text("\n".join(kind.classnames) + "\n")
    (out / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na picture of a {c}.\n")


def write_image_folder(
    out: Path,
    n: int,
    seed: int,
    split: str = "test",
    n_train: int = 128,
    n_val: int = 0,
    label: str = "colour",
    image_size: int = 64,
    image_ext: str = "png",
    write_classnames: bool = True,
    **_: Any,
) -> None:
    """`<out>/<split>/<class>/<i>.<image_ext>` for train, val (when `n_val` > 0) and the test split; the class
    folders are the class names with spaces as underscores, listed in label order in `<out>/classnames.txt`."""
    kind = label_kind(label)
    folders = [c.replace(" ", "_") for c in kind.classnames]
    for name, size in _split_sizes(split, n, n_train, n_val).items():
        for i, (image, y) in enumerate(_samples(kind, seed, name, size, image_size)):
            path = out / name / folders[y] / f"{i:06d}.{image_ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_encode(image, image_ext))
    if write_classnames:
        (out / "classnames.txt").write_text("\n".join(folders) + "\n")
