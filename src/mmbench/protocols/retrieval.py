"""Zero-shot image-text retrieval (Flickr30K, COCO): embed every image and all its captions once, then recall@k.

One pass over the data: each image and its first `captions_per_image` captions are embedded together, so images
are decoded once. Texts are ordered by (image index, caption position), which is what `recall_at_k` indexes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmbench.data import IndexedStream, open_reader
from mmbench.errors import DataError
from mmbench.lit.predict import IndexedPredictor, StreamDataModule, predict
from mmbench.lit.trainer import make_trainer
from mmbench.metrics.retrieval import recall_at_k
from mmbench.models.base import Capability, ModelWrapper
from mmbench.protocols.base import ProtocolOutput, RunContext
from mmbench.schema import TaskConfig


class _Collate:
    """Stack images, tokenize all captions of the batch at once (in the loader workers), pad caption counts."""

    def __init__(self, model: ModelWrapper, captions_per_image: int):
        self.tokenize, self.k = model.tokenize, captions_per_image

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        counts = [len(it["captions"]) for it in items]
        flat = [c for it in items for c in it["captions"]]
        return {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "tokens": self.tokenize(flat),
            "n_captions": torch.tensor(counts, dtype=torch.long),
        }


def _embed(k: int):
    def fn(model: ModelWrapper, batch: dict[str, Any]) -> dict[str, Tensor]:
        images = model.image_embeddings(batch["pixel_values"])  # (B, E)
        texts = model.text_embeddings(**batch["tokens"])  # (sum n_captions, E)
        counts = batch["n_captions"]
        padded = texts.new_zeros(len(counts), k, texts.shape[-1])  # (B, k, E)
        slot = torch.cat([torch.arange(int(c), device=texts.device) for c in counts])
        owner = torch.repeat_interleave(torch.arange(len(counts), device=texts.device), counts.to(texts.device))
        padded[owner, slot] = texts
        return {"image": images, "text": padded, "n_captions": counts.float()}

    return fn


def run(task: TaskConfig, ctx: RunContext) -> ProtocolOutput:
    params = task.retrieval
    ctx.require(Capability.CONTRASTIVE, "zero-shot retrieval")
    reader = open_reader(task, ctx.data_root)
    model = ctx.model()
    model.require(Capability.CONTRASTIVE, "zero-shot retrieval")
    transform = model.image_transform(train=False)
    k = params.captions_per_image

    def to_item(rec: dict[str, Any]) -> dict[str, Any]:
        return {"index": rec["index"], "pixel_values": transform(rec["image"]), "captions": rec["captions"][:k]}

    stream = IndexedStream(reader, task.data.split, to_item, ctx.batch_size or params.batch_size, limit=ctx.limit)
    data = StreamDataModule(stream, ctx.num_workers, _Collate(model, k))
    trainer = make_trainer(ctx.trainer)
    predictor = IndexedPredictor(model, _embed(k))
    out = predict(trainer, predictor, data)
    if not out:
        raise DataError(f"task {task.name!r}: the {task.data.split!r} split of {ctx.data_root} has no samples")

    counts = out["n_captions"].long()  # (I,)
    valid = torch.arange(k)[None, :] < counts[:, None]  # (I, k)
    text_emb = out["text"][valid]  # (T, E), ordered by (image, caption)
    text_to_image = torch.arange(len(counts)).repeat_interleave(counts)  # (T,)
    metrics = recall_at_k(out["image"], text_emb, text_to_image, params.ks, params.chunk_size)
    details = {
        "n_images": len(counts),
        "n_texts": int(counts.sum()),
        "format": reader.format,
        "samples_per_rank": predictor.samples_per_rank,
    }
    return ProtocolOutput(metrics, n_samples=len(counts), details=details, is_global_zero=trainer.is_global_zero)
