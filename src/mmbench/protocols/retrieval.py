"""Zero-shot image-text retrieval (Flickr30K, COCO): embed every image and all its captions once, then recall@k.

One pass over the data: each image and its first `captions_per_image` captions are embedded together, so images
are decoded once. Texts are ordered by (image index, caption position), which is what `recall_at_k` indexes.

ITM re-ranking (`rerank_k` > 0, models with the ITM capability) adds a second pass. Every rank computes the same
contrastive top k of every query from the gathered embeddings, and so the same sorted list of (image, caption)
pairs to score (each pair once, though both directions may ask for it). The images are then streamed again in the
same blocks; each batch's image states (`itm_image_states`: FLAVA 197 x 768 floats, 600 KB, per image at 224 px)
are held only while that batch's pairs are scored, `batch_size` pairs per forward, so memory is one batch of image
states, never all of them (3 GB at COCO's 5k images), and each image is decoded and encoded twice in all. What is
kept across the run is small: the caption strings (gathered in the first pass) and the pair list, O(P) with P <=
(I + T) * k (480k pairs, 4 MB of ids, at COCO with k = 16). Batches are the same on any rank layout and pair
scores are gathered by pair id, so 2 processes give exactly the 1-process numbers. The result keeps the contrastive
recalls (the paper's zero-shot numbers, which the leaderboard shows) and adds `tr_r1_itm`, ... beside them, with k
and the cost (pairs scored, seconds) in `details.rerank`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from mmbench.data import IndexedStream, open_reader
from mmbench.errors import DataError
from mmbench.lit.predict import IndexedPredictor, StreamDataModule, predict
from mmbench.lit.trainer import make_trainer
from mmbench.metrics.retrieval import Ranks, contrastive_candidates, reranked_recall_at_k, retrieval_ranks
from mmbench.models.base import Capability, ModelWrapper
from mmbench.protocols.base import ProtocolOutput, RunContext
from mmbench.protocols.sample_rows import sample_ref, truncate
from mmbench.schema import TaskConfig


class _Collate:
    """Stack images, tokenize all captions of the batch at once (in the loader workers), pad caption counts."""

    def __init__(self, model: ModelWrapper, captions_per_image: int, keep_texts: bool = False):
        self.tokenize, self.k, self.keep_texts = model.tokenize, captions_per_image, keep_texts

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        counts = [len(it["captions"]) for it in items]
        flat = [c for it in items for c in it["captions"]]
        batch = {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "tokens": self.tokenize(flat),
            "n_captions": torch.tensor(counts, dtype=torch.long),
        }
        if self.keep_texts:  # the re-ranking pass pairs each image with other images' captions
            batch["captions"] = [it["captions"] for it in items]
        return batch


def _embed(k: int, captions: list[tuple[int, list[str]]] | None = None):
    def fn(model: ModelWrapper, batch: dict[str, Any]) -> dict[str, Tensor]:
        if captions is not None:  # (index, captions) of this rank's images, for the re-ranking pass
            captions.extend(zip(batch["index"].tolist(), batch["captions"], strict=True))
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
    rerank = f"ITM re-ranked retrieval (task.retrieval.rerank_k={params.rerank_k})"
    ctx.require(Capability.CONTRASTIVE, "zero-shot retrieval")
    if params.rerank_k:
        ctx.require(Capability.ITM, rerank)
    reader = open_reader(task, ctx.data_root)
    model = ctx.model()
    model.require(Capability.CONTRASTIVE, "zero-shot retrieval")
    if params.rerank_k:
        model.require(Capability.ITM, rerank)
    transform = model.image_transform(train=False)
    k = params.captions_per_image

    def to_item(rec: dict[str, Any]) -> dict[str, Any]:
        return {"index": rec["index"], "pixel_values": transform(rec["image"]), "captions": rec["captions"][:k]}

    stream = IndexedStream(reader, task.data.split, to_item, ctx.batch_size or params.batch_size, limit=ctx.limit)
    keep_texts = bool(params.rerank_k) or ctx.log_samples  # re-ranking and the sample log need the captions
    data = StreamDataModule(stream, ctx.num_workers, _Collate(model, k, keep_texts=keep_texts))
    trainer = make_trainer(ctx.trainer)
    texts: list[tuple[int, list[str]]] | None = [] if keep_texts else None
    predictor = IndexedPredictor(model, _embed(k, texts))
    out = predict(trainer, predictor, data)
    if not out:
        raise DataError(f"task {task.name!r}: the {task.data.split!r} split of {ctx.data_root} has no samples")

    counts = out["n_captions"].long()  # (I,)
    valid = torch.arange(k)[None, :] < counts[:, None]  # (I, k)
    text_emb = out["text"][valid]  # (T, E), ordered by (image, caption)
    text_to_image = torch.arange(len(counts)).repeat_interleave(counts)  # (T,)
    ranks = retrieval_ranks(out["image"], text_emb, text_to_image, params.chunk_size)
    metrics = ranks.recall(params.ks)
    details = {
        "n_images": len(counts),
        "n_texts": int(counts.sum()),
        "format": reader.format,
        "samples_per_rank": predictor.samples_per_rank,
    }
    captions = [c[:k] for c in _gather_texts(trainer, texts)] if texts is not None else None  # every rank calls
    if captions is not None and [len(c) for c in captions] != counts.tolist():
        raise DataError(f"task {task.name!r}: the captions gathered do not match the embeddings")  # never
    if params.rerank_k:
        start = time.perf_counter()
        cands = contrastive_candidates(out["image"], text_emb, text_to_image, params.rerank_k, params.chunk_size)
        keys = cands.pair_keys()  # (P,)
        pass2 = IndexedStream(reader, task.data.split, _image_item(transform), stream.block_size, limit=ctx.limit)
        pairs = _PairCollate(model, keys, out["index"], [t for c in captions for t in c], stream.block_size)
        scorer = IndexedPredictor(model, _itm)
        scored = predict(trainer, scorer, StreamDataModule(pass2, ctx.num_workers, pairs))
        if not torch.equal(scored["index"], torch.arange(len(keys))):
            raise DataError(f"task {task.name!r}: the re-ranking pass did not score every pair")
        metrics.update(reranked_recall_at_k(cands, keys, scored["score"], text_to_image, params.ks))
        details["rerank"] = {
            "k": params.rerank_k,
            "k_tr": cands.i2t.shape[1],  # at most the number of captions
            "k_ir": cands.t2i.shape[1],  # at most the number of images
            "score": "ITM log P(match)",
            "pairs_scored": len(keys),  # each pair once, though both directions may ask for it
            "pairs_asked": cands.i2t.numel() + cands.t2i.numel(),
            "pairs_per_rank": scorer.samples_per_rank,
            "seconds": round(time.perf_counter() - start, 3),
        }
    samples = sample_rows(reader, task.data.split, out["index"], captions, ranks) if ctx.log_samples else None
    return ProtocolOutput(
        metrics, n_samples=len(counts), details=details, is_global_zero=trainer.is_global_zero, samples=samples
    )


def sample_rows(
    reader: Any, split: str, image_index: Tensor, captions: list[list[str]], ranks: Ranks
) -> Iterator[dict[str, Any]]:
    """The contrastive ranks behind recall@k, one row per query: first every image (`query: "image"`: `rank` of
    its best-ranked caption, `prediction` the top-1 caption's id, `target` its captions' ids), then every caption
    (`query: "text"`, `index` its image's, `caption` its position among them, `id` `<image id>#<position>`: `rank`
    of its image, `prediction` the top-1 image's id, `target` its image's id). `correct` = `rank` < 1, so
    recall@k = mean(`rank` < k) over each kind's rows."""
    refs = [sample_ref(reader, split, i) for i in image_index.tolist()]  # (I,) small: ids and paths
    image_ids = [ref.get("id", ref["index"]) for ref in refs]
    caption_ids = [f"{image_ids[r]}#{j}" for r, caps in enumerate(captions) for j in range(len(caps))]  # (T,)
    starts = [0]
    for caps in captions:
        starts.append(starts[-1] + len(caps))
    for r, (rank, top) in enumerate(zip(ranks.tr_rank.tolist(), ranks.tr_top1.tolist())):
        target = caption_ids[starts[r] : starts[r + 1]]
        yield {
            "query": "image",
            **refs[r],
            "prediction": caption_ids[top],
            "target": target,
            "rank": rank,
            "correct": rank < 1,
        }
    ir = zip(ranks.ir_rank.tolist(), ranks.ir_top1.tolist())
    owners = [(r, j, text) for r, caps in enumerate(captions) for j, text in enumerate(caps)]
    for t, ((r, j, text), (rank, top)) in enumerate(zip(owners, ir)):
        yield {
            "query": "text",
            "index": refs[r]["index"],
            "caption": j,
            "id": caption_ids[t],
            "text": truncate(text),
            "prediction": image_ids[top],
            "target": image_ids[r],
            "rank": rank,
            "correct": rank < 1,
        }


def _gather_texts(trainer: Any, local: list[tuple[int, list[str]]]) -> list[list[str]]:
    """Every image's captions in index order, on every rank (each rank saw its own images' only)."""
    if trainer.world_size > 1:
        parts: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(parts, local)
        local = [item for part in parts for item in part]
    by_index = dict(local)
    return [by_index[i] for i in sorted(by_index)]


def _image_item(transform: Any):
    def fn(rec: dict[str, Any]) -> dict[str, Any]:
        return {"index": rec["index"], "pixel_values": transform(rec["image"])}

    return fn


class _PairCollate:
    """A batch of images and every pair of theirs to score: `index` holds the pairs' positions in `keys` (so the
    predictor gathers scores by pair), `slot` each pair's image in the batch, `chunks` the captions tokenized
    `chunk` pairs at a time (in the loader workers). The same images give the same chunks on any rank layout."""

    def __init__(self, model: ModelWrapper, keys: Tensor, image_index: Tensor, texts: list[str], chunk: int):
        n_txt = len(texts)
        self.tokenize, self.texts, self.chunk = model.tokenize, texts, chunk
        self.image_index = image_index  # (I,) sorted sample index of each image row
        self.pair_text = keys % n_txt  # (P,)
        self.starts = torch.searchsorted(keys // n_txt, torch.arange(len(image_index) + 1))  # (I+1,) image-major

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        rows = torch.searchsorted(self.image_index, torch.tensor([it["index"] for it in items]))  # (B,)
        spans = [torch.arange(int(self.starts[r]), int(self.starts[r + 1])) for r in rows]
        pair = torch.cat(spans)  # (Pb,)
        slot = torch.arange(len(items)).repeat_interleave(torch.tensor([len(s) for s in spans]))  # (Pb,)
        texts = [self.texts[int(t)] for t in self.pair_text[pair]]
        chunks = [self.tokenize(texts[i : i + self.chunk]) for i in range(0, len(texts), self.chunk)]
        return {
            "index": pair,
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "slot": slot,
            "chunks": chunks,
        }


def _itm(model: ModelWrapper, batch: dict[str, Any]) -> dict[str, Tensor]:
    states = model.itm_image_states(batch["pixel_values"])  # (B, N, D), once per image
    slots = batch["slot"].split([len(next(iter(c.values()))) for c in batch["chunks"]])
    scores = [model.itm_scores_from_states(states[s], **c) for s, c in zip(slots, batch["chunks"], strict=True)]
    return {"score": torch.cat(scores)}  # (Pb,)
