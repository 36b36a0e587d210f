"""Zero-shot retrieval recall@k, computed in chunks so memory stays bounded at COCO scale (5k x 25k).

Rule (CLIP_benchmark / the FLAVA paper): image->text (TR) is a hit at k when *any* of the image's captions ranks
in its top k; text->image (IR) is a hit when the caption's one image does. A candidate outranks the positive only
when its score is strictly greater, so ties resolve in the model's favour and the result does not depend on the
order of the candidates. Scores are cosine similarities of L2-normalised embeddings, computed in float64: with
float32 dot products, a (T, I) and an (I, T) product of the same vectors can round differently, and weak or
random models produce near-ties that such noise would flip.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _best_positive_rank_tr(sim: Tensor, positive: Tensor) -> Tensor:
    """sim (c, T), positive (c, T) bool -> rank of each row's best positive among its non-positives (c,)."""
    best = sim.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)  # (c, 1)
    return ((sim > best) & ~positive).sum(dim=1)


def recall_at_k(
    image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, ks: list[int] = (1, 5, 10), chunk_size: int = 1024
) -> dict[str, float]:
    """image_emb (I, E), text_emb (T, E), text_to_image (T,) long -> {"tr_r1": .., "ir_r1": ..} as fractions.

    Peak extra memory is O(chunk_size * max(I, T)) instead of the O(I * T) full similarity matrix.
    """
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image has shape {tuple(text_to_image.shape)}, expected ({n_txt},)")
    image_emb, text_emb = image_emb.double(), text_emb.double()
    text_to_image = text_to_image.to(image_emb.device)
    tr_rank = torch.empty(n_img, dtype=torch.long, device=image_emb.device)
    for start in range(0, n_img, chunk_size):
        stop = min(start + chunk_size, n_img)
        sim = image_emb[start:stop] @ text_emb.T  # (c, T)
        rows = torch.arange(start, stop, device=image_emb.device)
        positive = text_to_image[None, :] == rows[:, None]  # (c, T)
        tr_rank[start:stop] = _best_positive_rank_tr(sim, positive)
    ir_rank = torch.empty(n_txt, dtype=torch.long, device=image_emb.device)
    for start in range(0, n_txt, chunk_size):
        stop = min(start + chunk_size, n_txt)
        sim = text_emb[start:stop] @ image_emb.T  # (c, I)
        pos = sim.gather(1, text_to_image[start:stop, None])  # (c, 1)
        ir_rank[start:stop] = (sim > pos).sum(dim=1)
    out = {}
    for k in ks:
        out[f"tr_r{k}"] = (tr_rank < k).double().mean().item()
        out[f"ir_r{k}"] = (ir_rank < k).double().mean().item()
    return out


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
