"""Zero-shot retrieval recall@k, computed in chunks so memory stays bounded at COCO scale (5k x 25k).

Rule (CLIP_benchmark / the FLAVA paper): image->text (TR) is a hit at k when *any* of the image's captions ranks
in its top k; text->image (IR) is a hit when the caption's one image does. A candidate outranks the positive only
when its score is strictly greater, so ties resolve in the model's favour and the result does not depend on the
order of the candidates. Scores are cosine similarities of L2-normalised embeddings, computed in float64: with
float32 dot products, a (T, I) and an (I, T) product of the same vectors can round differently, and weak or
random models produce near-ties that such noise would flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _best_positive_rank_tr(sim: Tensor, positive: Tensor) -> Tensor:
    """sim (c, T), positive (c, T) bool -> rank of each row's best positive among its non-positives (c,)."""
    best = sim.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)  # (c, 1)
    return ((sim > best) & ~positive).sum(dim=1)


@dataclass(frozen=True)
class Ranks:
    """Per-query outcome of the chunked pass: what recall@k counts, and each query's top-1 candidate."""

    tr_rank: Tensor  # (I,) rank of each image's best-ranked positive caption (0 = a hit at 1)
    ir_rank: Tensor  # (T,) rank of each caption's image
    tr_top1: Tensor  # (I,) the caption ranked first for each image (argmax: ties to the lowest id)
    ir_top1: Tensor  # (T,) the image ranked first for each caption

    def recall(self, ks: list[int]) -> dict[str, float]:
        out = {}
        for k in ks:
            out[f"tr_r{k}"] = (self.tr_rank < k).double().mean().item()
            out[f"ir_r{k}"] = (self.ir_rank < k).double().mean().item()
        return out


def retrieval_ranks(image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, chunk_size: int = 1024) -> Ranks:
    """image_emb (I, E), text_emb (T, E), text_to_image (T,) long -> every query's rank and top-1, both ways.

    Peak extra memory is O(chunk_size * max(I, T)) instead of the O(I * T) full similarity matrix.
    """
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image has shape {tuple(text_to_image.shape)}, expected ({n_txt},)")
    image_emb, text_emb = image_emb.double(), text_emb.double()
    text_to_image = text_to_image.to(image_emb.device)
    tr_rank = torch.empty(n_img, dtype=torch.long, device=image_emb.device)
    tr_top1 = torch.empty(n_img, dtype=torch.long, device=image_emb.device)
    for start in range(0, n_img, chunk_size):
        stop = min(start + chunk_size, n_img)
        sim = image_emb[start:stop] @ text_emb.T  # (c, T)
        rows = torch.arange(start, stop, device=image_emb.device)
        positive = text_to_image[None, :] == rows[:, None]  # (c, T)
        tr_rank[start:stop] = _best_positive_rank_tr(sim, positive)
        tr_top1[start:stop] = sim.argmax(dim=1)
    ir_rank = torch.empty(n_txt, dtype=torch.long, device=image_emb.device)
    ir_top1 = torch.empty(n_txt, dtype=torch.long, device=image_emb.device)
    for start in range(0, n_txt, chunk_size):
        stop = min(start + chunk_size, n_txt)
        sim = text_emb[start:stop] @ image_emb.T  # (c, I)
        pos = sim.gather(1, text_to_image[start:stop, None])  # (c, 1)
        ir_rank[start:stop] = (sim > pos).sum(dim=1)
        ir_top1[start:stop] = sim.argmax(dim=1)
    return Ranks(tr_rank, ir_rank, tr_top1, ir_top1)


def recall_at_k(
    image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, ks: list[int] = (1, 5, 10), chunk_size: int = 1024
) -> dict[str, float]:
    """image_emb (I, E), text_emb (T, E), text_to_image (T,) long -> {"tr_r1": .., "ir_r1": ..} as fractions,
    from `retrieval_ranks` (memory O(chunk_size * max(I, T)))."""
    return retrieval_ranks(image_emb, text_emb, text_to_image, chunk_size).recall(ks)


def recall_at_k_full(
    image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, ks: list[int] = (1, 5, 10)
) -> dict[str, float]:
    """The naive path: the whole (I, T) similarity matrix at once (what the benchmark compares against)."""
    sim = image_emb.double() @ text_emb.double().T  # (I, T)
    positive = text_to_image[None, :] == torch.arange(image_emb.shape[0], device=sim.device)[:, None]
    tr_rank = _best_positive_rank_tr(sim, positive)
    pos = sim.T.gather(1, text_to_image[:, None])  # (T, 1)
    ir_rank = (sim.T > pos).sum(dim=1)
    out = {}
    for k in ks:
        out[f"tr_r{k}"] = (tr_rank < k).double().mean().item()
        out[f"ir_r{k}"] = (ir_rank < k).double().mean().item()
    return out


# ---- ITM re-ranking -------------------------------------------------------------------------------------------------
# Each query's contrastive top k is ranked by the ITM score; the other candidates keep their contrastive order below
# them. A query whose positive is among its top k gets the rank of its best positive among the k (strictly greater
# ITM scores only, as above); otherwise its rank is k plus the candidates outside the top k that the contrastive
# rule puts above it, which needs no ITM score and is computed with the top k, in the same chunks.


@dataclass(frozen=True)
class Candidates:
    """Each query's contrastive top k (descending similarity, ties in index order), both ways."""

    i2t: Tensor  # (I, k_tr) text ids of each image's top k_tr captions
    t2i: Tensor  # (T, k_ir) image ids of each caption's top k_ir images
    tr_below: Tensor  # (I,) rank of the image's best caption when none is in its top k_tr (>= k_tr), else -1
    ir_below: Tensor  # (T,) the same for each caption's image

    def pair_keys(self) -> Tensor:
        """(P,) sorted unique `image * T + text` of every (image, caption) pair either direction needs scored."""
        n_txt = self.ir_below.shape[0]
        images = torch.arange(self.i2t.shape[0], device=self.i2t.device)
        texts = torch.arange(n_txt, device=self.t2i.device)
        tr = images[:, None] * n_txt + self.i2t  # (I, k_tr)
        ir = self.t2i * n_txt + texts[:, None]  # (T, k_ir)
        return torch.unique(torch.cat([tr.reshape(-1), ir.reshape(-1)]))  # sorted


def _top_k(sim: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """sim (c, N) -> top k ids (c, k) in descending order, ties in index order, and the (c, N) membership mask."""
    top = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]  # (c, k)
    member = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, top, True)  # (c, N)
    return top, member


def contrastive_candidates(
    image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, k: int, chunk_size: int = 1024
) -> Candidates:
    """The top min(k, T) captions of every image and the top min(k, I) images of every caption, by the float64
    cosine similarity `recall_at_k` ranks by; memory O(chunk_size * max(I, T))."""
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    image_emb, text_emb = image_emb.double(), text_emb.double()
    text_to_image = text_to_image.to(image_emb.device)
    k_tr, k_ir = min(k, n_txt), min(k, n_img)
    i2t = torch.empty(n_img, k_tr, dtype=torch.long, device=image_emb.device)
    tr_below = torch.empty(n_img, dtype=torch.long, device=image_emb.device)
    for start in range(0, n_img, chunk_size):
        stop = min(start + chunk_size, n_img)
        sim = image_emb[start:stop] @ text_emb.T  # (c, T)
        positive = text_to_image[None, :] == torch.arange(start, stop, device=sim.device)[:, None]  # (c, T)
        i2t[start:stop], member = _top_k(sim, k_tr)
        best = sim.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)  # (c, 1)
        below = k_tr + ((sim > best) & ~positive & ~member).sum(dim=1)
        tr_below[start:stop] = torch.where((positive & member).any(dim=1), -1, below)
    t2i = torch.empty(n_txt, k_ir, dtype=torch.long, device=image_emb.device)
    ir_below = torch.empty(n_txt, dtype=torch.long, device=image_emb.device)
    for start in range(0, n_txt, chunk_size):
        stop = min(start + chunk_size, n_txt)
        sim = text_emb[start:stop] @ image_emb.T  # (c, I)
        pos = text_to_image[start:stop, None]  # (c, 1)
        t2i[start:stop], member = _top_k(sim, k_ir)
        below = k_ir + ((sim > sim.gather(1, pos)) & ~member).sum(dim=1)
        ir_below[start:stop] = torch.where(member.gather(1, pos)[:, 0], -1, below)
    return Candidates(i2t, t2i, tr_below, ir_below)


def reranked_recall_at_k(
    cands: Candidates, keys: Tensor, scores: Tensor, text_to_image: Tensor, ks: list[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k after ITM re-ranking: `scores` (P,) are the ITM scores of the pairs `keys` (P,) =
    `cands.pair_keys()`. Returns {"tr_r1_itm": .., "ir_r1_itm": ..} as fractions."""
    n_txt = cands.ir_below.shape[0]
    text_to_image = text_to_image.to(cands.i2t.device)
    keys, scores = keys.to(cands.i2t.device), scores.double().to(cands.i2t.device)

    def lookup(pair: Tensor) -> Tensor:  # (..., ) keys -> their scores
        at = torch.searchsorted(keys, pair)
        if not bool((keys[at.clamp(max=len(keys) - 1)] == pair).all()):
            raise ValueError("a candidate pair has no ITM score")
        return scores[at]

    images = torch.arange(cands.i2t.shape[0], device=keys.device)
    tr_itm = lookup(images[:, None] * n_txt + cands.i2t)  # (I, k_tr)
    tr_pos = text_to_image[cands.i2t] == images[:, None]  # (I, k_tr)
    tr_rank = _best_positive_rank_tr(tr_itm, tr_pos)
    tr_rank = torch.where(cands.tr_below < 0, tr_rank, cands.tr_below)
    texts = torch.arange(n_txt, device=keys.device)
    ir_itm = lookup(cands.t2i * n_txt + texts[:, None])  # (T, k_ir)
    ir_pos = cands.t2i == text_to_image[:, None]  # (T, k_ir): at most one
    best = ir_itm.masked_fill(~ir_pos, float("-inf")).amax(dim=1, keepdim=True)  # (T, 1)
    ir_rank = ((ir_itm > best) & ~ir_pos).sum(dim=1)
    ir_rank = torch.where(cands.ir_below < 0, ir_rank, cands.ir_below)
    out = {}
    for k in ks:
        out[f"tr_r{k}_itm"] = (tr_rank < k).double().mean().item()
        out[f"ir_r{k}_itm"] = (ir_rank < k).double().mean().item()
    return out
