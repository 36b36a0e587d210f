"""In-context evaluation cost: seconds per 100 queries at 0 and 8 shots (and any others), per generative preset and
task, through the whole protocol (prompt building and image decoding in the loader, the model's generate or
loglikelihood, scoring) on synthetic data. Prints; asserts nothing (no timed tests in tests/).

    python benchmarks/incontext.py                               # tiny presets, VQAv2 (generate) + HM (loglik.)
    python benchmarks/incontext.py --models flamingo-rehearsal --queries 16   # OpenFlamingo-4B's vision tower and
                                                                 # LM width (2 layers), 224 px, random weights

Each measurement is a fresh run (`redo` + `fresh`: no saved trial outputs) after one warm-up run that builds the
model and the synthetic data; the model build is not counted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["flamingo-tiny", "idefics-tiny"])
    parser.add_argument("--tasks", nargs="+", default=["vqav2_fewshot", "hateful_memes_fewshot"])
    parser.add_argument("--shots", nargs="+", type=int, default=[0, 8])
    parser.add_argument("--queries", type=int, default=100, help="queries per measurement (--limit)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from mmbench.api import evaluate
    from mmbench.config import Registry, default_registry_roots

    torch.set_num_threads(args.threads)
    registry = Registry(roots=[HERE / "rehearsal", *default_registry_roots()])
    print(f"torch threads {args.threads}, {args.queries} queries per run, batch {args.batch_size}")
    print(f"{'model':<20} {'task':<22} {'shots':>5} {'s / 100 queries':>16} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for task in args.tasks:
                for i, shots in enumerate(args.shots):
                    run = dict(
                        data="synthetic", limit=args.queries, batch_size=args.batch_size, num_workers=0,
                        progress=False, output=Path(tmp) / "out", cache_dir=Path(tmp) / "cache", registry=registry,
                        overrides=[f"task.incontext.shots={shots}"], redo=True, fresh=True,
                    )  # fmt: skip
                    if i == 0:
                        evaluate(model, task, **run)  # warm-up: imports, synthetic data, first-call costs
                    start = time.perf_counter()
                    (res,) = evaluate(model, task, **run)
                    wall = time.perf_counter() - start - res.provenance["model_build_seconds"]
                    per_100 = 100 * wall / max(1, res.n_samples)
                    rss = res.provenance["peak_rss_mb"]
                    print(f"{model:<20} {task:<22} {shots:>5} {per_100:>16.2f} {rss:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
