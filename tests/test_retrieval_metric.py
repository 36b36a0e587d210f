"""recall@k against a brute-force reference written straight from the rule, with loops and full sorts."""

from __future__ import annotations

import pytest
import torch

from mmbench.metrics.retrieval import recall_at_k, recall_at_k_full


def brute_force(image_emb, text_emb, text_to_image, ks):
    sim = (image_emb.double() @ text_emb.double().T).tolist()
    n_img, n_txt = len(sim), len(sim[0])
    out = {}
    for k in ks:
        tr_hits = 0
        for i in range(n_img):
            positives = [t for t in range(n_txt) if text_to_image[t] == i]
            best = max(sim[i][t] for t in positives)
            # rank = number of negatives scoring strictly higher than the best positive
            rank = sum(1 for t in range(n_txt) if t not in positives and sim[i][t] > best)
            tr_hits += rank < k
        ir_hits = 0
        for t in range(n_txt):
            pos = sim[int(text_to_image[t])][t]
            rank = sum(1 for i in range(n_img) if sim[i][t] > pos)
            ir_hits += rank < k
        out[f"tr_r{k}"] = tr_hits / n_img
        out[f"ir_r{k}"] = ir_hits / n_txt
    return out


def _data(n_img=23, seed=0, ragged=True, dim=8):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 6, (n_img,), generator=g) if ragged else torch.full((n_img,), 5)
    text_to_image = torch.arange(n_img).repeat_interleave(counts)
    image = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=-1)
    # captions correlated with their image, so recalls are neither 0 nor 1
    text = torch.nn.functional.normalize(
        image[text_to_image] + 0.9 * torch.randn(len(text_to_image), dim, generator=g), dim=-1
    )
    return image, text, text_to_image


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])
@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_recall_equals_brute_force(chunk_size, seed):
    image, text, t2i = _data(seed=seed)
    ks = [1, 3, 5, 10]
    expected = brute_force(image, text, t2i, ks)
    got = recall_at_k(image, text, t2i, ks, chunk_size=chunk_size)
    assert got == pytest.approx(expected, abs=1e-12)
    assert recall_at_k_full(image, text, t2i, ks) == pytest.approx(expected, abs=1e-12)
    assert 0 < got["tr_r1"] < 1 and 0 < got["ir_r1"] < 1  # a meaningful case


def test_perfect_and_ties():
    # Identical embeddings everywhere: every candidate ties with the positive, none is strictly greater.
    image = torch.ones(4, 3) / 3**0.5
    text = torch.ones(8, 3) / 3**0.5
    t2i = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert recall_at_k(image, text, t2i, [1]) == {"tr_r1": 1.0, "ir_r1": 1.0}
    # Orthogonal one-hot: captions exactly on their image -> perfect retrieval
    image = torch.eye(4)
    text = image[t2i]
    assert recall_at_k(image, text, t2i, [1], chunk_size=3) == {"tr_r1": 1.0, "ir_r1": 1.0}


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="text_to_image has shape"):
        recall_at_k(torch.eye(3), torch.eye(3), torch.tensor([0, 1]), [1])
