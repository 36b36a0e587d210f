"""Frozen image features per split: extracted once under a Lightning Trainer, cached on disk, keyed by content.

The key (`feature_key`) hashes everything that moves the numbers and nothing that does not:
- weights: `models.fingerprint.weights_fingerprint`, computed without building the model;
- preprocessing: the preset's `preprocess` block and the wrapper that applies it; the Trainer precision;
- data: reader format and options, split name, and the split's files (names, sizes, mtimes) and class list;
- `--limit`, and `FEATURE_VERSION` (bump it when extraction code changes what features come out).
Not in the key: the preset's name (same weights = same features), batch size and worker count (per-sample
features; batching changes float rounding only), where the cache or the data lives.

A lookup happens for every split before any extraction, so a fully cached task never builds the model, and in a
multi-process run every rank sees the same hits (no rank can write an entry before all ranks have looked: writing
follows a prediction, which needs every rank). Only global rank 0 writes, via a temporary file and `os.replace`: an
entry is complete or absent, never partial.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmbench.config import to_dict
from mmbench.data import IndexedStream, Reader
from mmbench.errors import DataError
from mmbench.lit.predict import IndexedPredictor, StreamDataModule, predict
from mmbench.lit.trainer import make_trainer
from mmbench.models.base import ModelWrapper
from mmbench.models.fingerprint import weights_fingerprint
from mmbench.paths import atomic_save
from mmbench.protocols.base import RunContext

log = logging.getLogger("mmbench")

FEATURE_VERSION = 1


@dataclass
class SplitFeatures:
    features: Tensor  # (N, D) float32, rows in sample-index order
    labels: Tensor  # (N,) int64


FEATURE_KINDS = ("image_features", "image_embeddings")  # pooled (linear probe) | contrastive, normalised (RICES)


def feature_key(
    ctx: RunContext, reader: Reader, split: str, weights: str, kind: str = "image_features"
) -> tuple[str, dict[str, Any]]:
    """(hex digest, the parts it hashes); the parts are stored beside the features for inspection."""
    parts = {
        "feature_version": FEATURE_VERSION,
        "features": kind,
        "weights": weights,
        "preprocess": {"wrapper": ctx.model_cfg.wrapper, **to_dict(ctx.model_cfg.preprocess)},
        "precision": ctx.trainer.precision or "32-true",
        "data": {
            "format": reader.format,
            "options": reader.options,
            "split": split,
            "files": reader.fingerprint(split),
        },
        "limit": ctx.limit,
    }
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), parts


class FeatureCache:
    """`<cache_dir>/features/<key[:2]>/<key>.pt`: {"features", "labels", "parts" (JSON), "digest" (sha256)}.

    The cache only saves time, so it never decides whether an evaluation finishes: a damaged entry is a miss (and
    is rewritten), and a write that fails -- disk full, quota, a read-only folder, a file where a folder should
    be -- is warned about once, naming the entry, leaves no temporary file, and stops further writes for this run.
    Entries are read with `weights_only=True`: a pickle that would run code is refused, and so is a miss."""

    def __init__(self, cache_dir: Path):
        self.root = Path(cache_dir) / "features"
        self.error: str | None = None  # the first failed write ("<path>: <reason>"); later writes are skipped

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> SplitFeatures | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            feats, labels = entry["features"], entry["labels"]
            if feats.ndim != 2 or labels.shape != (feats.shape[0],):
                raise ValueError(f"shapes {tuple(feats.shape)} and {tuple(labels.shape)} do not match")
            if entry.get("digest") != _digest(feats, labels):  # torch.load does not check the zip's CRCs
                raise ValueError("its features do not match their checksum")
        except Exception as e:  # a damaged entry is a miss (it is rewritten), never a wrong number
            log.warning("feature cache entry %s is unreadable (%s); extracting again", path, e)
            return None
        return SplitFeatures(feats, labels)

    def save(self, key: str, feats: SplitFeatures, parts: dict[str, Any]) -> Path | None:
        """The entry's path, or None when it could not be written (see the class docstring)."""
        if self.error is not None:
            return None
        entry = {"features": feats.features, "labels": feats.labels, "parts": json.dumps(parts, default=str)}
        entry["digest"] = _digest(feats.features, feats.labels)
        path = self.path(key)
        try:
            return atomic_save(path, entry)
        except (OSError, RuntimeError) as e:  # OutputError (an OSError) when the OS refused; RuntimeError: torch's
            self.error = f"{path}: {getattr(e, 'reason', None) or (e.strerror if isinstance(e, OSError) else 0) or e}"
            log.warning("feature cache: cannot write %s; going on without caching", self.error)
            return None


def _digest(features: Tensor, labels: Tensor) -> str:
    """sha256 of the tensors' dtypes, shapes and bytes: a damaged entry (flipped or zeroed bytes in the tensor
    data) loads without complaint otherwise and would give wrong numbers. ~1 s per GB, against minutes of
    extraction per GB of features."""
    h = hashlib.sha256()
    for t in (features, labels):
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy())
    return h.hexdigest()


class _Collate:
    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        return {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        }


class _ToItem:
    """Record -> model input, in the loader workers (a class, not a closure, so that workers can pickle it)."""

    def __init__(self, transform: Any):
        self.transform = transform

    def __call__(self, rec: dict[str, Any]) -> dict[str, Any]:
        label = -1 if rec["label"] is None else rec["label"]  # unlabelled records (VQA) embed all the same
        return {"index": rec["index"], "pixel_values": self.transform(rec["image"]), "label": label}


class _Features:
    """`kind` of a batch's images; a class so that the kind is part of the predictor, not a global."""

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, model: ModelWrapper, batch: dict[str, Any]) -> dict[str, Tensor]:
        # Labels ride along with the features so that they are gathered and de-duplicated by the same index.
        feats = getattr(model, self.kind)(batch["pixel_values"])  # (B, D)
        return {"features": feats, "label": batch["label"]}


@dataclass
class Extraction:
    splits: dict[str, SplitFeatures]
    cache: dict[str, str]  # split -> "hit" | "miss" (extracted, saved) | "unsaved" (the write failed) | "uncached"
    is_global_zero: bool
    cache_error: str | None = None  # why an entry could not be written ("<path>: <reason>")


def load_or_extract(
    ctx: RunContext, reader: Reader, splits: list[str], batch_size: int, kind: str = "image_features"
) -> Extraction:
    """Features of every split: from the cache where present, else extracted under one Trainer (and cached).
    `kind`: `image_features` (pooled, the linear probe's) or `image_embeddings` (contrastive, L2-normalised)."""
    cache = FeatureCache(ctx.cache_dir)
    weights = weights_fingerprint(ctx.model_cfg, memo_dir=ctx.cache_dir)
    keys = {s: feature_key(ctx, reader, s, weights, kind) if weights else None for s in splits}
    found = {s: cache.load(k[0]) for s, k in keys.items() if k is not None}
    missing = [s for s in splits if found.get(s) is None]
    status = {s: "hit" for s in splits if s not in missing}
    if status:
        log.info("features from the cache: %s", ", ".join(status))
    if not missing:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        return Extraction({s: found[s] for s in splits}, status, getattr(rank_zero_only, "rank", 0) == 0)

    model = ctx.model()
    if weights is None:  # the build just fetched the weights: now they can be named
        weights = weights_fingerprint(ctx.model_cfg, memo_dir=ctx.cache_dir)
        keys = {s: feature_key(ctx, reader, s, weights, kind) if weights else None for s in splits}
    trainer = make_trainer(ctx.trainer)
    predictor = IndexedPredictor(model, _Features(kind))
    to_item = _ToItem(model.image_transform(train=False))
    for split in missing:
        stream = IndexedStream(reader, split, to_item, batch_size, limit=ctx.limit)
        out = predict(trainer, predictor, StreamDataModule(stream, ctx.num_workers, _Collate()))
        if not out:
            raise DataError(f"{reader.root}: the {split!r} split has no samples")
        feats = SplitFeatures(out["features"].float().contiguous(), out["label"].long())
        found[split] = feats
        if keys[split] is None:
            status[split] = "uncached"
            continue
        status[split] = "miss"
        if trainer.is_global_zero and cache.save(keys[split][0], feats, keys[split][1]) is None:
            status[split] = "unsaved"
    return Extraction({s: found[s] for s in splits}, status, trainer.is_global_zero, cache.error)
