"""Real-shape synthetic data (`mmbench data synth --real-shape`): the published layouts at their real scale of
everything but the sample count, for rehearsing a real run (`benchmarks/rehearsal.py`) without the datasets.

The scene world's small square images and few classes make tests fast and tasks learnable; a real run meets
something else, and this writes that: the published split names (VQAv2's train2014 / val2014 / test2015 +
test-dev2015 questions, SNLI-VE's train / dev / test, Hateful Memes' five files, GLUE's parquet splits with MNLI's
validation_matched / _mismatched, and only `train` + `test` for the `clip-benchmark/wds_*` classification sets,
which is all the published repos hold: the dataset viewer lists two splits for Aircraft, Country211, PCam, Pets,
Caltech101, CIFAR-100, ImageNet and the others checked, though CLIP_benchmark's torchvision builder knows
Country211's third split as `valid`), the real image sizes and encodings (COCO's 640x480 JPEGs in both
orientations, Flickr's ~500x375, memes as PNGs of many sizes, CIFAR's 32x32 PNGs, MNIST's 28x28 greyscale,
KITTI's 1242x375, ImageNet-like varied JPEGs), the real number of classes (the task's `linear_probe.num_classes`:
ImageNet 1000, CIFAR-100 100, Country211 211, ...) and GLUE pairs with a long tail of long texts. `n` is the
number of records in every split (images for classification and retrieval, questions, pairs, memes, rows).

Images are scenes of the scene world drawn at the real size, with seeded pixel noise: flat colour compresses to a
few kB and decodes faster than any photograph, which would flatter the data path's measured throughput. The
content is not meant to be learnable at these sizes (classification labels are `i % num_classes`, each class its
own scene); it is meant to be read, decoded and transformed exactly as the real files are. Deterministic: the same
(n, seed) writes the same files. The multimodal and GLUE writers live in `real_shape_mm`.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmbench.data.synthetic.scene import captions, render, sample_scene
from mmbench.errors import ConfigError
from mmbench.schema import TaskConfig

DEFAULT_N = 16  # records per split when `--n` is not given
SAMPLES_PER_SHARD = 1000
Size = tuple[int, int]  # (width, height)

# COCO (VQAv2's images, COCO captions): at most 640 on the long side, landscape and portrait.
COCO: tuple[Size, ...] = ((640, 480), (480, 640), (640, 427), (427, 640), (640, 360), (500, 375), (612, 612))
FLICKR: tuple[Size, ...] = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 500), (500, 281))
MEMES: tuple[Size, ...] = ((550, 366), (800, 533), (265, 400), (1024, 768), (474, 592), (600, 600), (400, 225))
PHOTOS: tuple[Size, ...] = ((500, 375), (375, 500), (500, 333), (640, 480), (500, 500), (800, 600), (333, 500))

# Per vision task: the image sizes of the published files (and the mode, where it is not RGB).
VISION: dict[str, tuple[tuple[Size, ...], str]] = {
    "imagenet": (PHOTOS, "RGB"),
    "food101": (((512, 512), (512, 384), (384, 512), (512, 341)), "RGB"),
    "cifar10": (((32, 32),), "RGB"),
    "cifar100": (((32, 32),), "RGB"),
    "cars": (((640, 427), (800, 600), (1024, 683), (400, 300)), "RGB"),
    "aircraft": (((1024, 681), (1024, 768), (800, 533)), "RGB"),
    "dtd": (((640, 480), (300, 300), (500, 400), (640, 640)), "RGB"),
    "pets": (((500, 375), (375, 500), (500, 333)), "RGB"),
    "caltech101": (((300, 200), (300, 225), (260, 300)), "RGB"),
    "flowers102": (((500, 667), (667, 500), (500, 500)), "RGB"),
    "mnist": (((28, 28),), "L"),
    "stl10": (((96, 96),), "RGB"),
    "eurosat": (((64, 64),), "RGB"),
    "gtsrb": (((30, 30), (52, 48), (64, 66), (120, 110), (250, 232)), "RGB"),
    "kitti_distance": (((1242, 375), (1224, 370)), "RGB"),
    "pcam": (((96, 96),), "RGB"),
    "ucf101": (((320, 240),), "RGB"),
    "clevr_counts": (((480, 320),), "RGB"),
    "fer2013": (((48, 48),), "L"),
    "sun397": (((500, 375), (800, 600), (640, 480), (375, 500), (1024, 768)), "RGB"),
    "rendered_sst2": (((448, 448),), "RGB"),
    "country211": (PHOTOS, "RGB"),
}

WRITERS: dict[str, str] = {
    "wds_classification": "mmbench.data.synthetic.real_shape:write_wds_classification",
    "image_folder": "mmbench.data.synthetic.real_shape:write_image_folder",
    "wds_retrieval": "mmbench.data.synthetic.real_shape:write_wds_retrieval",
    "karpathy": "mmbench.data.synthetic.real_shape:write_karpathy",
    "vqa": "mmbench.data.synthetic.real_shape_mm:write_vqa",
    "snli_ve": "mmbench.data.synthetic.real_shape_mm:write_snli_ve",
    "hateful_memes": "mmbench.data.synthetic.real_shape_mm:write_hateful_memes",
    "glue": "mmbench.data.synthetic.real_shape_mm:write_glue",
}
# What the task's `data.synthetic` block may pass on: the identity of the data (which GLUE config, which Karpathy
# file, which image encoding), never the scene world's small sizes.
_PASSED_ON = ("config", "flavour", "image_ext")


def writer(fmt: str) -> Callable[..., None]:
    import importlib

    if fmt not in WRITERS:
        raise ConfigError(f"no real-shape writer for data format {fmt!r} (have: {', '.join(sorted(WRITERS))})")
    module, _, attr = WRITERS[fmt].partition(":")
    return getattr(importlib.import_module(module), attr)


def options(task: TaskConfig, base: dict[str, Any], n: int | None) -> dict[str, Any]:
    """The real-shape writer's keyword arguments, from the scene-world options `base` (`synth_options`)."""
    opts = {k: base[k] for k in ("format", "seed", "split", *_PASSED_ON) if k in base}
    opts.update(n=DEFAULT_N if n is None else n, task=task.name, real_shape=True)
    if task.protocol == "linear_probe":
        opts["num_classes"] = task.linear_probe.num_classes or 10
    if opts["n"] < 1:
        raise ConfigError(f"--n {opts['n']}: a real-shape dataset needs at least one record per split")
    return opts


# ---- images -------------------------------------------------------------------------------------------------


def picture(scene: Any, size: Size, rng: random.Random, mode: str = "RGB") -> Image.Image:
    """The scene drawn at (width, height), with seeded noise of a photograph's amplitude."""
    width, height = size
    image = render(scene, max(width, height), jitter=rng).resize((width, height), Image.BILINEAR)
    noise = np.random.default_rng(rng.getrandbits(63)).integers(-20, 21, size=(height, width, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)  # (H, W, 3)
    image = Image.fromarray(pixels)
    return image.convert(mode) if mode != "RGB" else image


def encode(image: Image.Image, ext: str) -> bytes:
    """The file bytes, in the published files' encoding (lossy JPEG/WebP at a photograph's quality, PNG)."""
    buf = io.BytesIO()
    if ext == "png":
        image.save(buf, format="PNG")
    elif ext == "webp":
        image.save(buf, format="WEBP", quality=90)
    elif ext in ("jpg", "jpeg"):
        image.save(buf, format="JPEG", quality=90)
    else:
        raise ConfigError(f"real-shape data: unknown image encoding {ext!r} (png, webp, jpg)")
    return buf.getvalue()


def _classified(task: str, split: str, i: int, seed: int, num_classes: int) -> tuple[Image.Image, int]:
    """Image i of a classification split: label i % K, the scene of its class, at one of the task's sizes."""
    sizes, mode = VISION.get(task, (PHOTOS, "RGB"))
    label = i % num_classes
    rng = random.Random(f"{seed}/real/{task}/{split}/{i}")
    scene = sample_scene(random.Random(f"{seed}/real/{task}/class/{label}"))
    return picture(scene, rng.choice(sizes), rng, mode), label


def _captioned(task: str, split: str, i: int, seed: int, sizes: tuple[Size, ...]) -> tuple[Image.Image, list[str]]:
    rng = random.Random(f"{seed}/real/{task}/{split}/{i}")
    scene = sample_scene(rng)
    caps = captions(scene, rng, 7)
    return picture(scene, rng.choice(sizes), rng), caps


def _write_shards(split_dir: Path, samples: Callable[[int], dict[str, bytes]], n: int, per_shard: int) -> None:
    """`<split_dir>/{0.tar, 1.tar, ..., nshards.txt}`; `samples(i)` gives sample i's members (ext -> bytes)."""
    import webdataset as wds

    split_dir.mkdir(parents=True, exist_ok=True)
    shards = -(-n // per_shard)
    for s in range(shards):
        with wds.TarWriter(str(split_dir / f"{s}.tar")) as sink:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                sink.write({"__key__": f"s{i:07d}", **samples(i)})
    (split_dir / "nshards.txt").write_text(f"{shards}\n")


# ---- classification ------------------------------------------------------------------------------------------


def write_wds_classification(
    out: Path,
    n: int,
    seed: int,
    task: str,
    num_classes: int,
    split: str = "test",
    image_ext: str = "webp",
    samples_per_shard: int = SAMPLES_PER_SHARD,
    **_: Any,
) -> None:
    """`train/` and the task's test split as `clip-benchmark/wds_*` publishes them (no val split), `num_classes`
    lines of `classnames.txt`."""
    for name in dict.fromkeys(("train", split)):

        def members(i: int, name: str = name) -> dict[str, bytes]:
            image, label = _classified(task, name, i, seed, num_classes)
            return {image_ext: encode(image, image_ext), "cls": str(label).encode()}

        _write_shards(out / name, members, n, samples_per_shard)
    (out / "classnames.txt").write_text("".join(f"{task} class {k}\n" for k in range(num_classes)))
    (out / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")


def write_image_folder(
    out: Path, n: int, seed: int, task: str, num_classes: int, split: str = "test", image_ext: str = "jpg", **_: Any
) -> None:
    """`train/<class>/` and `<split>/<class>/` folders for every class (empty ones too, as in a converted release),
    `classnames.txt` listing them in label order."""
    folders = [f"{task}_class_{k:04d}" for k in range(num_classes)]
    for name in dict.fromkeys(("train", split)):
        for folder in folders:
            (out / name / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = _classified(task, name, i, seed, num_classes)
            (out / name / folders[label] / f"{i:07d}.{image_ext}").write_bytes(encode(image, image_ext))
    (out / "classnames.txt").write_text("".join(f + "\n" for f in folders))


# ---- retrieval -----------------------------------------------------------------------------------------------


def write_wds_retrieval(
    out: Path,
    n: int,
    seed: int,
    task: str,
    split: str = "test",
    image_ext: str = "webp",
    samples_per_shard: int = SAMPLES_PER_SHARD,
    **_: Any,
) -> None:
    """The evaluated split of `clip-benchmark/wds_flickr30k` / `wds_mscoco_captions`: n images at the dataset's
    sizes, 5 captions each."""
    sizes = COCO if task == "coco" else FLICKR

    def members(i: int) -> dict[str, bytes]:
        image, caps = _captioned(task, split, i, seed, sizes)
        return {image_ext: encode(image, image_ext), "txt": "\n".join(caps[:5]).encode()}

    _write_shards(out / split, members, n, samples_per_shard)
    (out / "dataset_type.txt").write_text("retrieval\n")


def write_karpathy(out: Path, n: int, seed: int, task: str, flavour: str = "flickr30k", **_: Any) -> None:
    """`dataset_<flavour>.json` with n images in each of Karpathy's splits (COCO: train, restval, val, test, images
    in `train2014/` and `val2014/`, some with 6-7 captions; Flickr30K: train, val, test in `flickr30k-images/`)."""
    coco = flavour == "coco"
    splits = ("train", "restval", "val", "test") if coco else ("train", "val", "test")
    images, sentid = [], 0
    for split in splits:
        for i in range(n):
            imgid = len(images)
            image, caps = _captioned(task, f"karpathy/{split}", i, seed, COCO if coco else FLICKR)
            entry: dict[str, Any] = {"imgid": imgid, "split": split}
            if coco:
                folder = "train2014" if split == "train" else "val2014"
                cocoid = (100000 if split == "train" else 300000) + imgid
                entry.update(filepath=folder, filename=f"COCO_{folder}_{cocoid:012d}.jpg", cocoid=cocoid)
                path = out / folder / entry["filename"]
            else:
                entry["filename"] = f"{1000000 + imgid}.jpg"
                path = out / "flickr30k-images" / entry["filename"]
            k = 5 + (imgid % 3 if coco else 0)
            entry["sentences"] = [
                {"raw": raw, "tokens": raw.split(), "imgid": imgid, "sentid": sentid + j}
                for j, raw in enumerate(caps[:k])
            ]
            entry["sentids"] = [s["sentid"] for s in entry["sentences"]]
            sentid += k
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(image, "jpg"))
            images.append(entry)
    (out / f"dataset_{flavour}.json").write_text(json.dumps({"images": images, "dataset": flavour}))
