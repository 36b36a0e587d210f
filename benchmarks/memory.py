"""Flat memory: peak memory of fine-tuning's data path and of linear-probe extraction at N and 10N samples.

- fine-tuning (VQAv2 layout, the `vqav2` task): open and check the reader, build the answer vocabulary and the
  training table, then a DataLoader with workers draws a fixed number of batches through the real item function
  (the clip-tiny preset's transform at the task's 480 px, its tokenizer in the collate) -- N vs 10N questions;
- linear-probe extraction (`protocols.features.load_or_extract`, the IndexedStream path under a Trainer, CLIP_benchmark
  WebDataset shards, clip-tiny) -- every image of N vs 10N.

Each run is a subprocess (no shared heap); this process samples the memory of its whole tree (workers included)
from /proc every 50 ms: the sum of RSS (counts pages shared by the forked workers once per process) and the sum of
PSS (each shared page split among its sharers: the tree's real footprint), plus the main process's exact peak RSS
(VmHWM). Target: growth from N to 10N <= 10% or <= 200 MB, whichever is larger.

The children run with glibc's mmap threshold pinned at its initial 128 KB (`MALLOC_MMAP_THRESHOLD_`). Left dynamic,
glibc raises it after the first large free, and the loader workers' decode and resize buffers (~1-3 MB each) then
stay in their heaps: a worker's private memory ranged from 137 to 339 MB within one run, and two runs at the same N
peaked 120 MB apart -- heap fragmentation, unrelated to the dataset's size, and larger than the effect measured
(`--default-malloc` shows it). With the threshold pinned, repeated runs at one N agree within ~50 MB.

Fixtures come from `mmbench.data.synthetic.write` (640x640 JPEGs for VQA); the N and 10N datasets reuse the same
images (VQA questions cycle over them with new question ids, WebDataset shards are hard links), since what could
grow with the dataset is what is kept per record, not the pixels of distinct files. Also printed: the cost of the
pre-flight check and of the fingerprint for 100k image references.

    PYTHONPATH=src python benchmarks/memory.py             # ~3 minutes on 2 CPU cores
    PYTHONPATH=src python benchmarks/memory.py --questions 2000 --images 1000 --batches 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling helpers, also when a test imports this by path
from proctree import tree_memory  # noqa: E402

MB = 1 << 20


# ---- fixtures -----------------------------------------------------------------------------------------------


def _task(name: str, synthetic_opts: dict):
    from mmbench.config import Registry

    return Registry().task(name, overrides={"data": {"synthetic": synthetic_opts}})


def vqa_roots(work: Path, sizes: list[int], base_questions: int, image_size: int) -> dict[int, Path]:
    """One synthetic VQAv2 dataset, then per size a root whose train2014 has `size` questions cycling over it."""
    from mmbench.data import synthetic

    base = work / "vqa-base"
    if not (base / "SYNTHETIC.json").is_file():
        opts = {"n_train": base_questions, "n_test": 3, "image_size": image_size}
        synthetic.write(_task("vqav2", opts), base, n=30, seed=0)
    qs = json.loads((base / "v2_OpenEnded_mscoco_train2014_questions.json").read_text())
    anns = json.loads((base / "v2_mscoco_train2014_annotations.json").read_text())
    roots = {}
    for size in sizes:
        root = work / f"vqa-{size}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        for entry in base.iterdir():
            if "train2014_" not in entry.name:  # image folders and the other splits' files: shared
                (root / entry.name).symlink_to(entry)
        q_out, a_out = dict(qs), dict(anns)
        q_out["questions"] = [{**qs["questions"][i % base_questions], "question_id": i} for i in range(size)]
        a_out["annotations"] = [{**anns["annotations"][i % base_questions], "question_id": i} for i in range(size)]
        (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps(q_out))
        (root / "v2_mscoco_train2014_annotations.json").write_text(json.dumps(a_out))
        roots[size] = root
    return roots


def wds_roots(work: Path, sizes: list[int], image_size: int, per_shard: int) -> dict[int, Path]:
    """CLIP_benchmark shards of the smallest size; larger sizes repeat its shards (hard links)."""
    from mmbench.data import synthetic

    base = work / "wds-base"
    n = min(sizes)
    if not (base / "SYNTHETIC.json").is_file():
        opts = {"n_train": n, "image_size": image_size, "samples_per_shard": per_shard}
        synthetic.write(_task("cifar10", opts), base, n=8, seed=0)
    shards = sorted((base / "train").glob("*.tar"), key=lambda p: int(p.stem))
    roots = {}
    for size in sizes:
        root = work / f"wds-{size}"
        shutil.rmtree(root, ignore_errors=True)
        (root / "train").mkdir(parents=True)
        shutil.copy(base / "classnames.txt", root)
        (root / "test").symlink_to(base / "test")  # the task's own split, which open_reader checks
        copies = size // n
        for i in range(copies * len(shards)):
            os.link(shards[i % len(shards)], root / "train" / f"{i}.tar")
        (root / "train" / "nshards.txt").write_text(f"{copies * len(shards)}\n")
        roots[size] = root
    return roots


# ---- the measured runs (child processes) ---------------------------------------------------------------------


def child_finetune(root: Path, batches: int, batch_size: int, workers: int, cache: Path) -> dict:
    from types import SimpleNamespace

    from mmbench.config import Registry
    from mmbench.data import open_reader
    from mmbench.lit.finetune_data import Collate, FinetuneData, Table, item_fn, training_table
    from mmbench.models import build_model

    registry = Registry()
    task = registry.task("vqav2")
    p = task.finetune
    t0 = time.perf_counter()
    reader = open_reader(task, root)
    for split in (p.train_split, p.val_split):
        reader.check(split)
    vocab = reader.answer_vocab(cache)
    table = training_table(reader, p.train_split, None)
    t_table = time.perf_counter() - t0
    model = build_model(registry.model("clip-tiny"))
    transform = model.image_transform(train=True, image_size=p.image_size)
    train = Table(table, item_fn(p.head, p.input, p.train_split, transform, vocab, train=True))
    data = FinetuneData(train, None, Collate(model, p.head, 40), batch_size, 1, batches, batches, 0, workers)
    data.trainer = SimpleNamespace(global_step=0, world_size=1, global_rank=0)  # what train_dataloader reads
    t1, seen = time.perf_counter(), 0
    for batch in data.train_dataloader():
        seen += int(batch["pixel_values"].shape[0])
    shape = list(batch["pixel_values"].shape)
    return {
        "records": len(table),
        "items": seen,
        "batch": shape,
        "s_table": t_table,
        "s_iter": time.perf_counter() - t1,
    }


def child_probe(root: Path, workers: int, cache: Path) -> dict:
    from mmbench.config import Registry
    from mmbench.data import open_reader
    from mmbench.lit.trainer import TrainerOptions
    from mmbench.models import build_model
    from mmbench.protocols import RunContext
    from mmbench.protocols.features import load_or_extract

    registry = Registry()
    ctx = RunContext(
        model_cfg=registry.model("clip-tiny"),
        data_root=root,
        data_source="synthetic",
        model_factory=lambda cfg, fresh=False: build_model(cfg),
        trainer=TrainerOptions(accelerator="cpu", progress=False),
        num_workers=workers,
        cache_dir=cache,
    )
    t0 = time.perf_counter()
    reader = open_reader(registry.task("cifar10"), root)
    out = load_or_extract(ctx, reader, ["train"], batch_size=registry.task("cifar10").linear_probe.batch_size)
    feats = out.splits["train"].features
    return {"records": int(feats.shape[0]), "cache": out.cache["train"], "s_total": time.perf_counter() - t0}


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(args: list[str], pin_malloc: bool) -> dict:
    """Run `python memory.py --child ...` and sample its process tree until it exits."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pin_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, env=env, text=True)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"child {' '.join(args)} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "tree_rss": peak_rss, "tree_pss": peak_pss}


# ---- the pre-flight check at 100k references ------------------------------------------------------------------


def check_cost(work: Path, n: int) -> dict:
    from mmbench.data.columns import missing_files, stat_fingerprint

    folder = work / "refs"
    folder.mkdir(exist_ok=True)
    names = [f"COCO_train2014_{i:012d}.jpg" for i in range(n)]
    if len(os.listdir(folder)) != n:
        for name in names:
            open(folder / name, "wb").close()
    paths = [str(folder / name) for name in names]
    t0 = time.perf_counter()
    assert missing_files(paths) == (None, 0, n)
    t1 = time.perf_counter()
    stat_fingerprint(work, [f"refs/{name}" for name in names])
    t2 = time.perf_counter()
    for p in paths:  # what one existence check per file would cost
        os.stat(p)
    t3 = time.perf_counter()
    return {"check": t1 - t0, "fingerprint": t2 - t1, "stat_each": t3 - t2}


# ---- report ---------------------------------------------------------------------------------------------------


def verdict(small: int, large: int) -> str:
    growth = large - small
    allowed = max(0.10 * small, 200 * MB)
    return f"{'ok' if growth <= allowed else 'OVER'} (growth {growth / MB:+.0f} MB, allowed {allowed / MB:.0f} MB)"


def report(name: str, n: int, runs: dict[int, dict]) -> None:
    small, large = runs[n], runs[10 * n]
    print(f"\n{name}: {n} vs {10 * n} records")
    print(f"  {'':28s} {n:>10d} {10 * n:>10d}   ratio")
    for key, label in (
        ("tree_pss", "tree PSS peak (MB)"),
        ("tree_rss", "tree RSS peak (MB)"),
        ("hwm", "main VmHWM (MB)"),
    ):
        a, b = small[key], large[key]
        print(f"  {label:28s} {a / MB:10.0f} {b / MB:10.0f}   {b / a:.3f}   {verdict(a, b)}")
    extra = {k: v for k, v in large.items() if k not in ("tree_pss", "tree_rss", "hwm")}
    print(f"  {10 * n}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in extra.items()})}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=5000, help="N for fine-tuning (10N is also run)")
    ap.add_argument("--images", type=int, default=1000, help="N for linear-probe extraction (10N is also run)")
    ap.add_argument("--base-questions", type=int, default=1500, help="distinct questions (3 per 640 px image)")
    ap.add_argument("--image-size", type=int, default=640, help="VQA image side")
    ap.add_argument("--probe-image-size", type=int, default=224)
    # Small batches, many of them: the 480 px batches in flight (prefetched by the workers) are what the peak
    # mostly holds, and how many are in flight when the peak is sampled varies by one batch from run to run.
    ap.add_argument("--batches", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--refs", type=int, default=100_000, help="image references for the check's cost")
    ap.add_argument("--work", help="fixture folder (default: a temporary one, removed at the end)")
    ap.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's mmap threshold dynamic (peaks vary by ~150 MB)"
    )
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        kind, root, cache = args.child[0], Path(args.child[1]), Path(args.child[2])
        if kind == "finetune":
            res = child_finetune(root, args.batches, args.batch_size, args.workers, cache)
        else:
            res = child_probe(root, args.workers, cache)
        print(json.dumps({**res, "hwm": _vm_hwm()}))
        return

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mmbench-memory-"))
    try:
        t0 = time.perf_counter()
        nq, ni = args.questions, args.images
        vqa = vqa_roots(work, [nq, 10 * nq], args.base_questions, args.image_size)
        wds = wds_roots(work, [ni, 10 * ni], args.probe_image_size, per_shard=250)
        print(f"fixtures: {time.perf_counter() - t0:.0f} s in {work}")
        if not args.default_malloc:
            print("children run with MALLOC_MMAP_THRESHOLD_=131072 (see the module docstring; --default-malloc: off)")
        cost = check_cost(work, args.refs)
        print(
            f"pre-flight for {args.refs} image references: check (one listing per folder) {cost['check']:.2f} s, "
            f"fingerprint (one stat each) {cost['fingerprint']:.2f} s; a bare os.stat each {cost['stat_each']:.2f} s"
        )
        common = ["--batches", str(args.batches), "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        pin = not args.default_malloc
        ft = {
            n: measure(["--child", "finetune", str(r), str(work / f"cache-ft-{n}"), *common], pin)
            for n, r in vqa.items()
        }
        report(f"fine-tuning data path (VQAv2 layout, {args.image_size} px JPEGs, {args.batches} batches)", nq, ft)
        lp = {
            n: measure(["--child", "probe", str(r), str(work / f"cache-lp-{n}"), *common], pin) for n, r in wds.items()
        }
        report(f"linear-probe extraction (WebDataset, {args.probe_image_size} px webp, all images)", ni, lp)
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
