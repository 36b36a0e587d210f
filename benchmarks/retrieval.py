"""Retrieval benchmarks, printed side by side from one run (not a test: figures, not assertions).

1. recall@k at COCO scale (5,000 images x 25,000 captions, dim 768, synthetic unit vectors): wall time and peak
   extra memory of mmbench's chunked path vs the naive full-matrix path. Each path runs in a fresh process so that
   its peak RSS (VmHWM) is its own.
2. End-to-end embedding throughput of `mmbench`'s retrieval protocol (Lightning Trainer, IndexedStream, gather)
   on clip-tiny vs a bare PyTorch loop over the same WebDataset shards, same model, same batch size.
   Target: overhead ratio <= 1.15.

    python benchmarks/retrieval.py [--images 5000 --captions 5 --dim 768] [--e2e-images 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import torch


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _recall_job(path: str, n_img: int, per: int, dim: int, chunk: int, queue: mp.Queue) -> None:
    from mmbench.metrics.retrieval import recall_at_k, recall_at_k_full

    torch.set_num_threads(os.cpu_count() or 1)
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=-1)
    t2i = torch.arange(n_img).repeat_interleave(per)
    text = torch.nn.functional.normalize(image[t2i] + torch.randn(n_img * per, dim, generator=g), dim=-1)
    base = _rss_kb("VmRSS")
    start = time.perf_counter()
    if path == "chunked":
        out = recall_at_k(image, text, t2i, [1, 5, 10], chunk_size=chunk)
    else:
        out = recall_at_k_full(image, text, t2i, [1, 5, 10])
    wall = time.perf_counter() - start
    queue.put((wall, (_rss_kb("VmHWM") - base) / 1024, out))


def bench_recall(n_img: int, per: int, dim: int, chunk: int) -> None:
    ctx = mp.get_context("spawn")
    rows = {}
    for path in ("chunked", "full"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_recall_job, args=(path, n_img, per, dim, chunk, queue))
        proc.start()
        rows[path] = queue.get()
        proc.join()
    (tc, mc, oc), (tf, mf, of) = rows["chunked"], rows["full"]
    assert oc == of, "the two paths must agree exactly"
    print(f"\n[1] recall@k, {n_img:,} images x {n_img * per:,} captions, dim {dim}, float64 scores, chunk {chunk}")
    print(f"    {'path':<10} {'wall s':>8} {'peak extra MB':>14}")
    print(f"    {'chunked':<10} {tc:>8.2f} {mc:>14.0f}")
    print(f"    {'full':<10} {tf:>8.2f} {mf:>14.0f}")
    print(
        f"    chunked/full: time x{tc / tf:.2f}, memory x{mc / mf:.3f}; identical recalls: "
        + ", ".join(f"{k}={v:.4f}" for k, v in oc.items())
    )


def bench_end_to_end(n_images: int, batch: int, repeats: int) -> None:
    from mmbench.config import Registry
    from mmbench.data import open_reader, synthetic
    from mmbench.lit.trainer import TrainerOptions
    from mmbench.metrics.retrieval import recall_at_k
    from mmbench.models import build_model
    from mmbench.protocols import RunContext
    from mmbench.protocols.retrieval import run

    reg = Registry()
    task = reg.task("flickr30k")
    model = build_model(reg.model("clip-tiny"))
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.write(task, Path(tmp) / "flickr30k", n=n_images, seed=0)

        def ours() -> dict:
            ctx = RunContext(
                model_cfg=model.cfg,
                data_root=root,
                data_source="synthetic",
                model_factory=None,
                trainer=TrainerOptions(accelerator="cpu", progress=False),
                batch_size=batch,
                num_workers=0,
            )
            ctx._model = model
            return run(task, ctx).metrics

        def bare() -> dict:
            reader = open_reader(task, root)
            transform = model.image_transform()
            images, texts = [], []
            with torch.inference_mode():
                pending = []
                for rec in reader.samples("test"):
                    pending.append(rec)
                    if len(pending) == batch:
                        _embed_batch(model, transform, pending, images, texts)
                        pending = []
                if pending:
                    _embed_batch(model, transform, pending, images, texts)
            t2i = torch.arange(n_images).repeat_interleave(5)
            return recall_at_k(torch.cat(images), torch.cat(texts), t2i, [1, 5, 10])

        ours(), bare()  # warm-up: imports, first-call allocations
        t_ours, t_bare = [], []
        for _ in range(repeats):  # interleaved so that machine noise hits both
            start = time.perf_counter()
            m_ours = ours()
            t_ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            m_bare = bare()
            t_bare.append(time.perf_counter() - start)
    assert m_ours == m_bare, (m_ours, m_bare)
    best_ours, best_bare = min(t_ours), min(t_bare)
    print(f"\n[2] end-to-end embedding, clip-tiny, {n_images:,} images x 5 captions, batch {batch}, best of {repeats}")
    print(f"    mmbench retrieval protocol (Trainer)   {best_ours:7.2f} s  {n_images / best_ours:8.0f} images/s")
    print(f"    bare PyTorch loop, same shards/model   {best_bare:7.2f} s  {n_images / best_bare:8.0f} images/s")
    print(f"    overhead ratio mmbench/bare = {best_ours / best_bare:.3f} (target <= 1.15); identical recalls")


def _embed_batch(model, transform, recs, images, texts) -> None:
    pixels = torch.stack([transform(r["image"]) for r in recs])
    images.append(model.image_embeddings(pixels))
    texts.append(model.text_embeddings(**model.tokenize([c for r in recs for c in r["captions"]])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--captions", type=int, default=5)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--e2e-images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    bench_recall(args.images, args.captions, args.dim, args.chunk)
    bench_end_to_end(args.e2e_images, args.batch, args.repeats)


if __name__ == "__main__":
    main()
