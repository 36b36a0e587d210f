"""Linear-probe benchmark: prints its figures and asserts nothing (not a test).

1. solver   -- our torch L-BFGS sweep vs scikit-learn's LogisticRegression (lbfgs) run the way CLIP ran it (one cold
               fit per strength, max_iter 1000), through the same search (13 decades + 6 refinements), on the same
               Gaussian-mixture features: wall time and test top-1 (target: >= 5x faster at +-0.5 pt). Two kinds of
               features, both printed: `anisotropic` is shaped like the pooled features of trained encoders (a
               large shared mean, the "cone" of Liang et al. 2022, and a covariance spectrum decaying as ~1/i,
               Agrawal et al. 2022), where scikit-learn's cold fits take hundreds of iterations; `isotropic`
               (white noise around the class means) is perfectly conditioned, the best case for scikit-learn: every
               fit converges in ~10 iterations, and there the two solvers differ only in the cost of a pass.
2. cache    -- one whole task (a synthetic CLIP_benchmark-layout dataset) with an empty feature cache (build,
               extract, sweep) and again with it warm (target: warm <= 0.1 x cold), for the model as given and for
               the same model at ViT-Ti/16 size (192 wide, 12 layers, 224 px: DeiT-Ti's cost per image). The warm
               run costs the sweep plus fixed set-up (under a second here) whatever the model; the cold run adds
               extraction, which is what a real model makes expensive and the cache saves.
3. extract  -- images/s of our extraction (Trainer, IndexedStream, gather, cache write) vs a bare PyTorch loop
               over the same shards with the same transform, batch size and workers (target: <= 1.15x the time).

    PYTHONPATH=src python benchmarks/linear_probe.py                      # ~10 minutes on 2 cores
    PYTHONPATH=src python benchmarks/linear_probe.py --n-train 20000 --dim 768 --classes 100    # the issue's size
    PYTHONPATH=src python benchmarks/linear_probe.py --only solver --features isotropic --skip-sklearn
    PYTHONPATH=src python benchmarks/linear_probe.py --only extract --set model.preprocess.image_size=64
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mmbench import evaluate
from mmbench.config import Registry, parse_overrides
from mmbench.data import open_reader, synthetic
from mmbench.lit.trainer import TrainerOptions
from mmbench.metrics.accuracy import top1
from mmbench.models import build_model
from mmbench.protocols import RunContext
from mmbench.protocols.features import load_or_extract
from mmbench.protocols.logreg import fit_logreg, sweep_l2

TASK = "cifar10"  # its synthetic variant: shape labels, png members, no val split (hold-out)
# clip-tiny's vision tower at DeiT-Ti/16 size: a realistic cost per image for the cold-vs-warm comparison
VIT_TI = [
    "model.preprocess.image_size=224",
    "model.preprocess.resize=224",
    "model.arch.vision.hidden_size=192",
    "model.arch.vision.intermediate_size=768",
    "model.arch.vision.num_hidden_layers=12",
    "model.arch.vision.num_attention_heads=3",
    "model.arch.vision.patch_size=16",
    "model.arch.projection_dim=192",
]


def mixture(n: int, d: int, k: int, spread: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    return (torch.randn(k, d, generator=g) * spread)[y] + torch.randn(n, d, generator=g), y


def features(kind: str, n: int, d: int, k: int, spread: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixture as is (`isotropic`), or seen through a fixed random rotation with singular values i^-1/2 (so
    variances fall as 1/i) plus an offset five times the typical scale (`anisotropic`)."""
    x, y = mixture(n, d, k, spread, seed)
    if kind == "isotropic":
        return x, y
    g = torch.Generator().manual_seed(seed + 1)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))  # (d, d) orthogonal
    s = torch.arange(1, d + 1, dtype=torch.float32).pow(-0.5)  # (d,)
    offset = 5.0 * float(s.mean()) * torch.randn(d, generator=g)
    return ((x @ q) * s) @ q.T + offset, y


def bench_solver(a: argparse.Namespace) -> None:
    for kind in a.features or ["anisotropic", "isotropic"]:
        bench_solver_on(a, kind)


def bench_solver_on(a: argparse.Namespace, kind: str) -> None:
    n = a.n_train + a.n_val + a.n_test
    spread = a.spread if a.spread else 3.0 / math.sqrt(a.dim)  # ~50% top-1: a sweep with something to choose
    x, y = features(kind, n, a.dim, a.classes, spread)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tr, va, te = slice(0, a.n_train), slice(a.n_train, a.n_train + a.n_val), slice(a.n_train + a.n_val, n)
    trva = slice(0, a.n_train + a.n_val)
    print(
        f"\n[solver] {kind} features: {a.n_train} train / {a.n_val} val / {a.n_test} test x {a.dim}, "
        f"{a.classes} classes"
    )

    xd, yd = x.to(device), y.to(device)
    start = time.perf_counter()

    def ours(l2, warm):
        fit = fit_logreg(xd[tr], yd[tr], a.classes, l2, init=warm, max_iter=a.max_iter)
        return top1(fit.predict(xd[va]).cpu(), y[va]), fit

    sw = sweep_l2(ours)
    final = fit_logreg(xd[trva], yd[trva], a.classes, sw.best_l2, init=sw.best_state, max_iter=a.max_iter)
    acc_ours, t_ours = top1(final.predict(xd[te]).cpu(), y[te]), time.perf_counter() - start
    iters = sum(p.n_iter or 0 for p in sw.points) + final.n_iter
    print(
        f"  ours     {t_ours:8.1f} s  lambda* {sw.best_l2:<10.4g} test top-1 {100 * acc_ours:6.2f}  "
        f"({iters} L-BFGS iterations)"
    )
    if a.skip_sklearn:
        return

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    xn, yn = x.numpy(), y.numpy()
    capped, sk_iters = 0, 0
    start = time.perf_counter()

    def sk(l2, warm):
        nonlocal capped, sk_iters
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m = LogisticRegression(C=1.0 / l2, max_iter=a.max_iter).fit(xn[tr], yn[tr])
        capped += int(m.n_iter_[0] >= a.max_iter)
        sk_iters += int(m.n_iter_[0])
        return float((m.predict(xn[va]) == yn[va]).mean()), m

    sw_sk = sweep_l2(sk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = LogisticRegression(C=1.0 / sw_sk.best_l2, max_iter=a.max_iter).fit(xn[trva], yn[trva])
    acc_sk, t_sk = float((m.predict(xn[te]) == yn[te]).mean()), time.perf_counter() - start
    print(
        f"  sklearn  {t_sk:8.1f} s  lambda* {sw_sk.best_l2:<10.4g} test top-1 {100 * acc_sk:6.2f}  "
        f"({sk_iters} L-BFGS iterations; {capped} fits hit max_iter)"
    )
    print(f"  => ours {t_sk / t_ours:.1f}x faster; top-1 difference {100 * (acc_ours - acc_sk):+.2f} pt")


def _task(registry: Registry, a: argparse.Namespace):
    return registry.task(TASK, {"data": {"synthetic": {"n_train": a.task_train, "samples_per_shard": 256}}})


def bench_cache(a: argparse.Namespace, registry: Registry, data: Path, tmp: Path, label: str, sets: list[str]) -> None:
    print(f"\n[cache] {a.model} {label} on synthetic {TASK}: {a.task_train} train / {a.task_test} test images")
    common = dict(data_root=data.parent, progress=False, num_workers=a.workers, overrides=a.set + sets, redo=True)
    warm_up = synthetic.write(_task(registry, a), tmp / "warmup" / TASK, n=8)  # imports and first-use costs
    out = tmp / label.replace(" ", "-").replace("/", "-")
    evaluate(a.model, TASK, **{**common, "data_root": warm_up.parent}, output=out / "o0", cache_dir=out / "c0")
    times = []
    for run in ("cold", "warm"):
        start = time.perf_counter()
        res = evaluate(a.model, TASK, **common, output=out / "o1", cache_dir=out / "c1")[0]
        times.append(time.perf_counter() - start)
        print(
            f"  {run:5s} {times[-1]:7.2f} s   features {res.details['feature_cache']}  "
            f"top-1 {100 * res.metrics['top1']:.2f}"
        )
    print(f"  => warm = {times[1] / times[0]:.3f} x cold")


def bench_extract(a: argparse.Namespace, registry: Registry, data: Path, tmp: Path) -> None:
    import webdataset as wds
    from PIL import Image
    from torch.utils.data import DataLoader, IterableDataset

    cfg = registry.model(a.model, parse_overrides(a.set)["model"])
    task = _task(registry, a)
    model = build_model(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tf = model.image_transform(train=False)
    shards = [str(p) for p in sorted((data / "train").glob("*.tar"))]
    print(
        f"\n[extract] {a.model} (image size {cfg.preprocess.image_size}), {a.task_train} images, batch {a.batch}, "
        f"{a.workers} workers, {device.type}"
    )

    class Bare(IterableDataset):
        def __iter__(self):
            pipeline = wds.DataPipeline(wds.SimpleShardList(shards), wds.split_by_worker, wds.tarfile_to_samples())
            for s in pipeline:
                yield tf(Image.open(io.BytesIO(s["png"])).convert("RGB")), int(s["cls"])

    def bare() -> int:
        model.to(device).eval()
        n = 0
        with torch.inference_mode():
            for px, _ in DataLoader(Bare(), batch_size=a.batch, num_workers=a.workers):
                n += len(model.image_features(px.to(device)))
        return n

    def ours(i: int) -> int:
        ctx = RunContext(
            model_cfg=cfg,
            data_root=data,
            data_source="synthetic",
            model_factory=lambda c, fresh=False: model,
            trainer=TrainerOptions(progress=False),
            num_workers=a.workers,
            cache_dir=tmp / f"extract-cache-{i}",
        )
        return len(load_or_extract(ctx, open_reader(task, data), ["train"], a.batch).splits["train"].labels)

    best = {"bare": math.inf, "ours": math.inf}
    for i in range(a.repeats):
        for name in ("bare", "ours"):
            start = time.perf_counter()
            n = bare() if name == "bare" else ours(i)
            best[name] = min(best[name], time.perf_counter() - start)
            assert n == a.task_train
    for name, t in best.items():
        print(f"  {name:5s} {t:7.2f} s  {a.task_train / t:8.1f} images/s  (best of {a.repeats})")
    print(f"  => ours takes {best['ours'] / best['bare']:.3f}x the bare loop's time")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["solver", "cache", "extract"], action="append")
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-val", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--classes", type=int, default=50)
    p.add_argument("--features", choices=["anisotropic", "isotropic"], action="append", help="default: both")
    p.add_argument("--spread", type=float, help="class-mean std (default 3/sqrt(dim))")
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--model", default="clip-tiny")
    p.add_argument("--set", action="append", default=[], help="model.KEY=VALUE overrides, e.g. a larger tiny model")
    p.add_argument("--task-train", type=int, default=2000, help="training images of the synthetic task")
    p.add_argument("--task-test", type=int, default=500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-vit", action="store_true", help="cache: only the model as given")
    a = p.parse_args()
    only = set(a.only or ["solver", "cache", "extract"])
    logging.getLogger("mmbench").setLevel(logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}")
    if "solver" in only:
        bench_solver(a)
    if only & {"cache", "extract"}:
        registry = Registry()
        with tempfile.TemporaryDirectory(prefix="mmbench-bench-") as d:
            tmp = Path(d)
            data = synthetic.write(_task(registry, a), tmp / "data" / TASK, n=a.task_test)
            if "cache" in only:
                bench_cache(a, registry, data, tmp, "as given", [])
                if not a.skip_vit:
                    bench_cache(a, registry, data, tmp, "at ViT-Ti/16 size", VIT_TI)
            if "extract" in only:
                bench_extract(a, registry, data, tmp)


if __name__ == "__main__":
    main()
