"""Image-text matching: FLAVA's ITM head against HF `FlavaForPreTraining`, and ITM re-ranked retrieval against
ranking every pair by ITM."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_

from mmbench.config import parse_overrides
from mmbench.errors import CapabilityError
from mmbench.models import Capability, build_model

TEXTS = ["a red circle above two blue squares", "one green triangle", "the movie was great and the story was good"]


@torch.no_grad()
def test_flava_itm_logits_equal_flava_for_pretraining(registry):
    """Aligned pairs, ragged texts, all parameters randomised (the ITM head's too)."""
    from transformers import FlavaForPreTraining

    from mmbench.models.flava import flava_config

    wrapper = randomize_(build_model(registry.model("flava-tiny")), seed=3)
    randomize_(wrapper.itm_head, seed=4)  # outside the wrapper's module tree
    assert not any(k.startswith("itm_head") for k in wrapper.state_dict())  # fine-tuning state is the encoders'
    reference = FlavaForPreTraining(flava_config(wrapper.cfg, len(wrapper.tokenizer))).eval()
    reference.flava.load_state_dict(wrapper.model.state_dict(), strict=True)
    reference.itm_head.load_state_dict(wrapper.itm_head.state_dict(), strict=True)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    tokens = wrapper.tokenize(TEXTS)
    assert (tokens["attention_mask"] == 0).any()
    # Unmasked inputs: HF computes ITM from its "masked" pass, here given the plain ids.
    theirs = reference(pixel_values=pixels, **tokens, input_ids_masked=tokens["input_ids"], return_loss=False)
    ours = wrapper.itm_logits(pixels, **tokens)  # (3, 2)
    diff = (ours - theirs.itm_logits).abs().max().item()
    print(f"parity flava itm_logits: max |diff| = {diff:.3g}")
    assert ours.shape == (3, 2) and diff <= 1e-5
    scores = wrapper.itm_scores(pixels, **tokens)  # (3,) log P(match)
    torch.testing.assert_close(scores, theirs.itm_logits.log_softmax(-1)[:, 1], rtol=0, atol=1e-5)
    # Pairing one image's states with many captions (what re-ranking does) scores the same as aligned inputs.
    states = wrapper.itm_image_states(pixels[:1]).expand(3, -1, -1)
    torch.testing.assert_close(
        wrapper.itm_scores_from_states(states, **tokens), wrapper.itm_scores(pixels[[0, 0, 0]], **tokens)
    )


def _saved_preset(registry, tmp_path, save_pretraining: bool):
    """flava-tiny's randomised weights saved as a FlavaForPreTraining (with itm_head) or a FlavaModel checkpoint."""
    from transformers import FlavaForPreTraining

    from mmbench.models.flava import flava_config

    original = randomize_(build_model(registry.model("flava-tiny")), seed=5)
    randomize_(original.itm_head, seed=6)
    if save_pretraining:
        full = FlavaForPreTraining(flava_config(original.cfg, len(original.tokenizer)))
        full.flava.load_state_dict(original.model.state_dict())
        full.itm_head.load_state_dict(original.itm_head.state_dict())
        full.save_pretrained(tmp_path / "ckpt")
    else:
        original.model.save_pretrained(tmp_path / "ckpt")
    original.tokenizer.save_pretrained(tmp_path / "ckpt")
    overrides = parse_overrides(
        [f"model.checkpoint={tmp_path / 'ckpt'}", "model.random_init=false", "model.tokenizer=null"]
    )
    return original, build_model(registry.model("flava-tiny", overrides["model"]))


@torch.no_grad()
def test_flava_checkpoint_with_itm_head_loads_it(registry, tmp_path):
    original, loaded = _saved_preset(registry, tmp_path, save_pretraining=True)
    assert Capability.ITM in loaded.capabilities
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    tokens = original.tokenize(TEXTS)
    torch.testing.assert_close(loaded.itm_logits(pixels, **tokens), original.itm_logits(pixels, **tokens))
    torch.testing.assert_close(loaded.pair_features(pixels, **tokens), original.pair_features(pixels, **tokens))


@torch.no_grad()
def test_flava_checkpoint_without_itm_head_lacks_the_capability_with_the_reason(registry, tmp_path):
    original, loaded = _saved_preset(registry, tmp_path, save_pretraining=False)
    assert Capability.ITM not in loaded.capabilities and Capability.FUSION in loaded.capabilities
    pixels = torch.randn(2, 3, 32, 32)
    tokens = original.tokenize(TEXTS[:2])
    torch.testing.assert_close(loaded.pair_features(pixels, **tokens), original.pair_features(pixels, **tokens))
    with pytest.raises(CapabilityError, match="holds no image-text matching head"):
        loaded.require(Capability.ITM, "ITM re-ranked retrieval")
    with pytest.raises(CapabilityError, match="no ITM capability"):
        loaded.itm_scores(pixels, **tokens)


# ---- the re-ranking metric, against an explicit ranked list per query ----------------------------------------------
def _explicit_rank(first: list[int], rest: list[int], is_positive) -> int:
    """Position of the first positive in the list `first` (re-ranked) + `rest` (contrastive order)."""
    return next(r for r, c in enumerate(first + rest) if is_positive(c))


def test_reranked_recall_equals_ranking_explicit_lists():
    """Random embeddings and ITM scores (no ties): each query's top k sorted by ITM, then the rest by similarity,
    written out as a list; the metric's ranks (including positives outside the top k) agree."""
    from mmbench.metrics.retrieval import contrastive_candidates, reranked_recall_at_k

    gen = torch.Generator().manual_seed(0)
    n_img, per, k, ks = 7, 3, 4, [1, 2, 5, 10]
    img, txt = torch.randn(n_img, 8, generator=gen, dtype=torch.float64), torch.randn(n_img * per, 8, generator=gen)
    t2i = torch.arange(n_img).repeat_interleave(per)
    itm = torch.randn(n_img, n_img * per, generator=gen, dtype=torch.float64)  # (I, T): every pair's ITM score
    cands = contrastive_candidates(img, txt.double(), t2i, k, chunk_size=3)
    keys = cands.pair_keys()
    sim = img @ txt.double().T  # (I, T)
    top_tr = [sim[i].argsort(descending=True)[:k].tolist() for i in range(n_img)]
    top_ir = [sim[:, t].argsort(descending=True)[:k].tolist() for t in range(len(t2i))]
    want = {(i, t) for i in range(n_img) for t in top_tr[i]} | {(i, t) for t in range(len(t2i)) for i in top_ir[t]}
    assert sorted(want) == [(int(x) // len(t2i), int(x) % len(t2i)) for x in keys]
    assert cands.i2t.tolist() == top_tr and cands.t2i.tolist() == top_ir
    got = reranked_recall_at_k(cands, keys, itm[keys // len(t2i), keys % len(t2i)], t2i, ks)
    tr, ir = [], []
    for i in range(n_img):
        first = sorted(top_tr[i], key=lambda t: -itm[i, t])
        rest = [t for t in sim[i].argsort(descending=True).tolist() if t not in top_tr[i]]
        tr.append(_explicit_rank(first, rest, lambda t, i=i: t2i[t] == i))
    for t in range(len(t2i)):
        first = sorted(top_ir[t], key=lambda i: -itm[i, t])
        rest = [i for i in sim[:, t].argsort(descending=True).tolist() if i not in top_ir[t]]
        ir.append(_explicit_rank(first, rest, lambda i, t=t: i == t2i[t]))
    assert any(r >= k for r in tr) and any(r >= k for r in ir), "some positives must lie outside the top k"
    for kk in ks:
        assert got[f"tr_r{kk}_itm"] == sum(r < kk for r in tr) / n_img
        assert got[f"ir_r{kk}_itm"] == sum(r < kk for r in ir) / len(t2i)


# ---- end to end: the protocol against ITM brute force ----------------------------------------------------------
@pytest.fixture(scope="module")
def flickr9(tmp_path_factory, registry):
    from mmbench.data import synthetic

    return synthetic.write(registry.task("flickr30k"), tmp_path_factory.mktemp("d") / "flickr30k", n=9, seed=2)


def _evaluate(model: str, root, out, *overrides: str, **kw):
    from mmbench import evaluate

    (res,) = evaluate(
        model, "flickr30k", data_root=root, output=out, progress=False, num_workers=0, overrides=overrides, **kw
    )
    return res


@pytest.fixture(scope="module")
def flava_ckpt(tmp_path_factory, registry) -> list[str]:
    """flava-tiny with all weights randomised at std 0.5, saved with its ITM head: ITM scores spread over units,
    not the hundredths of the preset's small init, so that no two compared scores are near-tied."""
    from transformers import FlavaForPreTraining

    from mmbench.models.flava import flava_config

    path = tmp_path_factory.mktemp("ckpt") / "flava"
    model = randomize_(build_model(registry.model("flava-tiny")), seed=7)
    randomize_(model.itm_head, seed=8)
    full = FlavaForPreTraining(flava_config(model.cfg, len(model.tokenizer)))
    full.flava.load_state_dict(model.model.state_dict())
    full.itm_head.load_state_dict(model.itm_head.state_dict())
    full.save_pretrained(path)
    model.tokenizer.save_pretrained(path)
    return [f"model.checkpoint={path}", "model.random_init=false", "model.tokenizer=null"]


@torch.no_grad()
def _itm_ranks(registry, root, model_overrides) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (image, caption) pair scored on its own by `itm_scores`: TR and IR ranks (best positive against
    strictly greater non-positives, as `recall_at_k` counts) and the (I, T) scores. One pair per forward, as the
    protocol scores them at batch size 1, so that each score is computed with the same shapes both ways and equal
    scores (the synthetic captions repeat) stay equal."""
    from mmbench.data import open_reader

    model = build_model(registry.model("flava-tiny", parse_overrides(model_overrides)["model"]))
    recs = list(open_reader(registry.task("flickr30k"), root).samples("test"))
    tf = model.image_transform()
    captions = [c for r in recs for c in r["captions"][:5]]
    t2i = torch.arange(len(recs)).repeat_interleave(5)
    itm = torch.tensor(
        [[model.itm_scores(tf(r["image"])[None], **model.tokenize([c])).item() for c in captions] for r in recs]
    )
    positive = t2i[None, :] == torch.arange(len(recs))[:, None]  # (I, T)
    best = itm.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)  # (I, 1)
    own = itm[t2i, torch.arange(len(t2i))][None, :]  # (1, T)
    return ((itm > best) & ~positive).sum(dim=1), ((itm > own) & ~positive).sum(dim=0), itm


def test_rerank_with_k_all_equals_ranking_every_pair_by_itm(registry, flickr9, flava_ckpt, tmp_path):
    overrides = [*flava_ckpt, "task.retrieval.rerank_k=1000"]
    res = _evaluate("flava-tiny", flickr9.parent, tmp_path, *overrides, batch_size=1)
    tr, ir, itm = _itm_ranks(registry, flickr9, flava_ckpt)
    n_img, n_txt = itm.shape
    for k in (1, 5, 10):
        assert res.metrics[f"tr_r{k}_itm"] == (tr < k).double().mean().item()
        assert res.metrics[f"ir_r{k}_itm"] == (ir < k).double().mean().item()
    rerank = res.details["rerank"]
    print(f"rerank k=all on {n_img}x{n_txt}: {rerank['pairs_scored']} pairs in {rerank['seconds']} s")
    assert rerank["k"] == 1000 and (rerank["k_tr"], rerank["k_ir"]) == (n_txt, n_img)
    assert rerank["pairs_scored"] == n_img * n_txt and rerank["pairs_asked"] == 2 * n_img * n_txt
    assert res.config["task"]["retrieval"]["rerank_k"] == 1000
    print({m: round(v, 3) for m, v in res.metrics.items()})
    assert any(res.metrics[f"{m}_itm"] != res.metrics[m] for m in ("tr_r1", "tr_r5", "ir_r1", "ir_r5")), "no change"


def test_rerank_needs_an_itm_head(registry, flickr9, tmp_path):
    res = _evaluate("clip-tiny", flickr9.parent, tmp_path, "task.retrieval.rerank_k=4")
    assert res.status == "n/a" and res.metrics == {}
    assert res.reason == (
        "model 'clip-tiny' has no ITM capability, which ITM re-ranked retrieval (task.retrieval.rerank_k=4) needs"
    )
    # Its own file: a contrastive clip-tiny result beside it is never replaced by the re-ranked n/a.
    from mmbench.results.store import read, result_path

    assert read(result_path(tmp_path, "clip-tiny", "flickr30k-itm4")) == res
    assert not result_path(tmp_path, "clip-tiny", "flickr30k").exists()


def test_rerank_off_leaves_the_committed_flava_tiny_result_as_it_was(tmp_path):
    """rerank_k=0 (the default, or set) is not recorded: same config hash and numbers as the committed result."""
    from pathlib import Path

    from mmbench.results.store import read, result_path

    committed = read(result_path(Path(__file__).parents[1] / "results" / "synthetic", "flava-tiny", "flickr30k"))
    res = _evaluate("flava-tiny", None, tmp_path, "task.retrieval.rerank_k=0", data="synthetic")
    assert res.config_hash == committed.config_hash and res.metrics == committed.metrics
    assert "rerank" not in res.details and "rerank_k" not in res.config["task"]["retrieval"]


@pytest.mark.multiprocess
def test_rerank_two_process_ddp_equals_single_process(tmp_path, flickr9):
    """9 images in blocks of 2: rank 0 scores blocks 0,2,4 and rank 1 blocks 1,3; the gathered re-ranked recalls
    and pair counts equal one process's."""
    import json
    import os
    import subprocess
    import sys

    from mmbench.results.store import result_path

    base = [sys.executable, "-m", "mmbench", "run", "--model", "flava-tiny", "--task", "flickr30k", "--no-progress"]
    base += ["--data-root", str(flickr9.parent), "--num-workers", "0", "--accelerator", "cpu", "--batch-size", "2"]
    base += ["--set", "task.retrieval.rerank_k=3"]
    for devices in ("1", "2"):
        proc = subprocess.run(
            [*base, "--devices", devices, "--output", str(tmp_path / devices)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    one = json.loads(result_path(tmp_path / "1", "flava-tiny", "flickr30k-itm3").read_text())
    two = json.loads(result_path(tmp_path / "2", "flava-tiny", "flickr30k-itm3").read_text())
    assert two["provenance"]["device"] == "cpu x2" and "tr_r1_itm" in one["metrics"]
    assert two["metrics"] == one["metrics"] and two["config_hash"] == one["config_hash"]
    r1, r2 = one["details"]["rerank"], two["details"]["rerank"]
    assert r1["pairs_scored"] == r2["pairs_scored"] == sum(r2["pairs_per_rank"]) and len(r2["pairs_per_rank"]) == 2
