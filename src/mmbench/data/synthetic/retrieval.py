"""Synthetic image-caption datasets in the two retrieval formats: CLIP_benchmark WebDataset and Karpathy JSON."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

from mmbench.data.synthetic.scene import captions, render, sample_scene


def _samples(n: int, seed: int, image_size: int, n_captions: int, part: str = "") -> list[tuple[Any, list[str]]]:
    """Sample i of a split depends only on (seed, part, i): both formats hold the same test set."""
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}/{part}{i}")
        scene = sample_scene(rng)
        out.append((render(scene, image_size, jitter=rng), captions(scene, rng, n_captions)))
    return out


def write_wds_retrieval(
    out: Path, n: int, seed: int, split: str = "test", image_size: int = 64, samples_per_shard: int = 64, **_: Any
) -> None:
    """`<out>/<split>/{nshards.txt, 0.tar, ...}` + `dataset_type.txt`; members `s%07d.webp` and `s%07d.txt`
    (captions joined by newlines), as in the `clip-benchmark/wds_flickr30k` / `wds_mscoco_captions` repos."""
    import webdataset as wds

    split_dir = out / split
    split_dir.mkdir(parents=True, exist_ok=True)
    samples = _samples(n, seed, image_size, 5)
    shards = [samples[i : i + samples_per_shard] for i in range(0, n, samples_per_shard)] or [[]]
    for s, shard in enumerate(shards):
        with wds.TarWriter(str(split_dir / f"{s}.tar")) as sink:
            for j, (image, caps) in enumerate(shard):
                buf = io.BytesIO()
                image.save(buf, format="WEBP", lossless=True)
                sink.write(
                    {"__key__": f"s{s * samples_per_shard + j:07d}", "webp": buf.getvalue(), "txt": "\n".join(caps)}
                )
    (split_dir / "nshards.txt").write_text(f"{len(shards)}\n")
    (out / "dataset_type.txt").write_text("retrieval\n")


def write_karpathy(
    out: Path, n: int, seed: int, flavour: str = "flickr30k", image_size: int = 64, n_train: int = 4, **_: Any
) -> None:
    """`dataset_<flavour>.json` in Karpathy's layout + JPEG images. COCO flavour: images under `val2014/` with
    `filepath`/`cocoid`, and every third test image carries 6-7 captions (the reader keeps the first 5). A few
    train images precede the test split so that readers must filter by split."""
    rng = random.Random(f"{seed}/karpathy")
    samples = _samples(n_train, seed, image_size, 7, part="train/") + _samples(n, seed, image_size, 7)
    images = []
    image_dir = out / ("val2014" if flavour == "coco" else "flickr30k-images")
    image_dir.mkdir(parents=True, exist_ok=True)
    sentid = 0
    for i, (image, caps) in enumerate(samples):
        split = "train" if i < n_train else "test"
        k = 5 + (rng.randint(1, 2) if flavour == "coco" and i % 3 == 0 else 0)
        entry: dict[str, Any] = {"imgid": i, "split": split, "sentences": []}
        if flavour == "coco":
            cocoid = 100000 + i
            entry.update(filepath="val2014", filename=f"COCO_val2014_{cocoid:012d}.jpg", cocoid=cocoid)
        else:
            entry["filename"] = f"{1000000 + i}.jpg"
        for raw in caps[:k]:
            entry["sentences"].append({"raw": raw, "tokens": raw.split(), "imgid": i, "sentid": sentid})
            sentid += 1
        entry["sentids"] = [s["sentid"] for s in entry["sentences"]]
        image.save(image_dir / entry["filename"], format="JPEG", quality=95)
        images.append(entry)
    (out / f"dataset_{flavour}.json").write_text(json.dumps({"images": images, "dataset": flavour}))
