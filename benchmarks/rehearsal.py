"""Rehearsal of a real run: full-size architectures with random weights, one short pass of every protocol, on
real-shape data, with the data path's own throughput beside the model's.

Tests and the demo run tiny presets on 32-px scene images; a real run meets full-size models, 480-px VQA images,
640x480 JPEGs, 1000 classes and 512-token texts, and code paths that only those reach. This runs, for each preset
in benchmarks/rehearsal/models/ (the exact architectures of `clip`, `flava`, `beit3-base` and Flamingo with its
ViT-L/14 tower and a 2-layer RedPajama-3B-wide LM, random weights, tiny built-in tokenizers), every protocol the
model can do at each task's real resolution, on `mmbench data synth --real-shape` data: zero-shot retrieval
(flickr30k, coco), linear probe (imagenet: 1000 classes; country211: 211 classes, no published val split), and
fine-tuning (vqav2 at 480 px with test-dev predictions, snli_ve, hateful_memes, mnli with texts past 512 tokens),
each through `mmbench.api.evaluate` as a user's run would go, with `--limit` caps and 1 update (`--steps`).

    PYTHONPATH=src python benchmarks/rehearsal.py                       # everything; 15-20 min on 2 CPU cores
    PYTHONPATH=src python benchmarks/rehearsal.py --models clip --protocols finetune --tasks vqav2
    PYTHONPATH=src python benchmarks/rehearsal.py --accelerator gpu --precision bf16-mixed --limit 64 --batch 16

Each model runs in its own process (a crash or an out-of-memory kill ends only that model's rows). Per (model,
task) the table gives: status (a failure with its one-line error), seconds of the evaluate call (model builds
included), the samples the model processed (training, selection, evaluation and prediction) per second, the data
path's samples per second (decode + transform + collate in the loader's workers over the same split, no model),
which of the two bounds the run, and the peak memory of the process tree (PSS: summed RSS would count the
model's pages once more for every forked loader worker). A failed row makes the exit status 1. Fine-tuning rows
also check that the training table is lazy (the reader offers random access): a materialised table holds every
decoded training image, which at VQAv2's 443,757 questions is hundreds of GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling helpers, also when a test imports this by path
from proctree import tree_memory  # noqa: E402

HERE = Path(__file__).resolve().parent
PRESETS = HERE / "rehearsal"
MODELS = {"clip": "clip-rehearsal", "flava": "flava-rehearsal", "beit3-base": "beit3-base-rehearsal"}
MODELS["flamingo"] = "flamingo-rehearsal"
# Per-task settings beyond the shared recipe (an evaluate call applies its overrides to all its tasks, so these
# tasks get calls of their own). VQAv2's answer vocabulary keeps answers seen 9 times (~3,129 on the real data): at
# a few questions per split that leaves only <unk>, a 1-way head; every answer seen keeps a real multi-answer head.
TASK_OVERRIDES = {"vqav2": ["task.data.options.vqa.min_answer_count=1"]}
TASKS = {
    "retrieval": ["flickr30k", "coco"],
    "linear_probe": ["imagenet", "country211"],
    "finetune": ["vqav2", "snli_ve", "hateful_memes", "mnli"],
}


def registry() -> Any:
    from mmbench.config import Registry, default_registry_roots

    return Registry(roots=[PRESETS, *default_registry_roots()])  # the rehearsal presets, then the built-in ones


# ---- memory of a process tree --------------------------------------------------------------------------------


def tree_pss_mb(root: int) -> float:
    """PSS of `root` and its descendants (loader workers), in MB."""
    return tree_memory(root)[1] / 2**20


class PeakMemory:
    """Polls the tree's PSS in a thread; `take()` returns the peak since the last `take()` (Linux only: elsewhere
    the process's own peak RSS)."""

    def __init__(self, every: float = 0.25):
        self.every, self.peak, self._stop = every, 0.0, threading.Event()
        self.linux = Path("/proc/self/smaps_rollup").exists()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self) -> None:
        if self.linux:
            self.peak = max(self.peak, tree_pss_mb(os.getpid()))
        else:
            import resource

            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB elsewhere
            self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20)

    def take(self) -> float:
        self.sample()
        peak, self.peak = self.peak, 0.0
        return peak

    def stop(self) -> None:
        self._stop.set()


# ---- data ----------------------------------------------------------------------------------------------------


def write_data(tasks: list[str], data_root: Path, n: int) -> list[dict[str, Any]]:
    """Real-shape data for every task under `data_root/<dirname>` (GLUE configs share one folder)."""
    from mmbench.data import dataset_root, synthetic

    reg, rows = registry(), []
    for name in tasks:
        task = reg.task(name)
        target = dataset_root(task, data_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        staged = synthetic.write(task, data_root.parent / "staging" / name, n=n, real_shape=True)
        if task.data.format == "glue":  # `<glue>/<config>/...`: move the config folder into the shared one
            target.mkdir(parents=True, exist_ok=True)
            for part in staged.iterdir():
                if not (target / part.name).exists():
                    part.rename(target / part.name)
        else:
            staged.rename(target)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        rows.append(
            {"task": name, "format": task.data.format, "seconds": time.perf_counter() - start, "mb": size / 2**20}
        )
    shutil.rmtree(data_root.parent / "staging", ignore_errors=True)
    return rows


# ---- the worker: one model, its tasks ------------------------------------------------------------------------


def overrides(spec: dict[str, Any]) -> list[str]:
    """The paper's recipe (not the scene world's short schedule, which `data.synthetic.finetune` would apply to
    generated data) at the rehearsal's size: `steps` updates of `batch` samples, validation at the end only."""
    s, b = spec["steps"], spec["batch"]
    return [
        "task.data.synthetic.finetune=null",
        f"task.finetune.max_steps={s}",
        f"task.finetune.batch_size={b}",
        f"task.finetune.device_batch_size={b}",
        "task.finetune.warmup_steps=0",
        f"task.finetune.val_every_steps={s}",
    ]


def data_path(model: Any, task: Any, root: Path, spec: dict[str, Any]) -> tuple[float, str | None]:
    """(samples/s of decode + transform + collate over the task's split in the loader's workers, a data-path
    failure or None). Fine-tuning also checks that the training table is lazy."""
    import torch
    from torch.utils.data import DataLoader

    from mmbench.data import IndexedStream, open_reader
    from mmbench.lit.finetune_data import Collate, item_fn
    from mmbench.protocols.finetune import effective_params, text_length

    reader = open_reader(task, root)
    problem = None
    if task.protocol == "finetune":
        p = effective_params(task, synthetic=False)
        if p.input == "pair" and reader.random_access(p.train_split) is None:
            problem = (
                f"data: the {reader.format} reader offers no random access, so fine-tuning holds the "
                f"{p.train_split!r} split in memory with every image decoded (grows with the dataset)"
            )
        transform = model.image_transform(train=False, image_size=p.image_size) if p.input == "pair" else None
        to_item = item_fn(p.head, p.input, task.data.split, transform)
        collate = Collate(model, p.head, text_length(p, model.cfg, model)["used"])
    elif task.protocol == "retrieval":
        transform, k = model.image_transform(train=False), task.retrieval.captions_per_image

        def to_item(rec: dict[str, Any]) -> dict[str, Any]:
            return {"pixel_values": transform(rec["image"]), "captions": rec["captions"][:k]}

        def collate(items: list[dict[str, Any]]) -> Any:
            pixels = torch.stack([it["pixel_values"] for it in items])
            return pixels, model.tokenize([c for it in items for c in it["captions"]])
    else:
        transform = model.image_transform(train=False)

        def to_item(rec: dict[str, Any]) -> Any:
            return transform(rec["image"]), rec["label"]

        def collate(items: list[Any]) -> Any:
            return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    stream = IndexedStream(reader, task.data.split, to_item, spec["batch"], limit=spec["n"])
    loader = DataLoader(stream, batch_size=spec["batch"], num_workers=spec["workers"], collate_fn=collate)
    count, start, first = 0, time.perf_counter(), None
    for batch in loader:
        size = len(batch["index"]) if isinstance(batch, dict) else len(batch[0])
        if first is None:  # the first batch pays for starting the workers: steady state from the second on
            first, first_size = time.perf_counter(), size
        else:
            count += size
    end = time.perf_counter()
    rate = count / (end - first) if count else first_size / (end - start)
    return rate, problem


def model_samples(result: Any, output: Path, limit: int) -> int:
    """How many samples the model processed for this result (from what the result records; a selection split
    is read `limit` samples at a time, being one of the data's n-record splits)."""
    d = result.details or {}
    if result.status != "ok":
        return 0
    if result.protocol == "retrieval":
        return d.get("n_images", result.n_samples)
    if result.protocol == "linear_probe":
        return d.get("n_train", 0) + d.get("n_val", 0) + d.get("n_test", 0)
    batch = d.get("batch", {})
    count = d.get("steps", 0) * batch.get("effective", 0) + sum(d.get("n_eval", {}).values())
    selection = (d.get("selection") or {}).get("data") or {}
    if "n" in selection:  # a hold-out, evaluated at every validation
        count += selection["n"] * len(d.get("val_history", []))
    elif "split" in selection:
        count += d.get("n_eval", {}).get(selection["split"], limit) * len(d.get("val_history", []))
    for name in (d.get("submissions") or {}).values():
        path = output / "artifacts" / result.model / name
        count += len(json.loads(path.read_text())) if path.is_file() else 0
    return count


def note(result: Any) -> str:
    d = result.details or {}
    if result.status != "ok":
        return result.reason or ""
    if result.protocol == "finetune":
        size = (d.get("finetune") or {}).get("image_size")
        text = d.get("text_length") or {}
        px = f"{size or 'preset'} px, " if (d.get("finetune") or {}).get("input") == "pair" else ""
        px += f"{d['answer_vocab']['size']} answers, " if d.get("answer_vocab") else ""
        return f"{px}text {text.get('used')}/{text.get('asked')}, selection {d.get('selection', {}).get('rule')}"
    if result.protocol == "linear_probe":
        return f"{d.get('num_classes')} classes, val: {d.get('val_source')}"
    return f"{d.get('n_images')} images x {d.get('n_texts', 0) // max(1, d.get('n_images', 1))} captions"


class Worker:
    """One model's tasks in this process; rows go to `spec["rows"]`, rewritten after each task, so that a crash
    keeps what was done."""

    def __init__(self, spec: dict[str, Any]):
        from mmbench.config import parse_overrides

        self.spec, self.reg, self.memory, self.rows = spec, registry(), PeakMemory(), []
        self.data_root, self.output = Path(spec["data_root"]), Path(spec["output"])
        self.task_overrides = parse_overrides(overrides(spec))["task"]
        self.throughput: dict[str, tuple[float | None, str | None]] = {}
        self.done: list[str] = []
        self.clock = time.perf_counter()

    def measure_data(self) -> None:
        """The data path of every task, with the transforms and tokenizer of the model (built once for this,
        after the runs, so that the rows' peak memory is the runs' own); fills in the rows already written."""
        from mmbench.data import dataset_root
        from mmbench.models import build_model

        start = time.perf_counter()
        model = build_model(self.reg.model(self.spec["model"]))
        size = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "build_s": time.perf_counter() - start}
        for name in self.spec["tasks"]:
            task = self.reg.task(name, self.task_overrides)
            try:
                self.throughput[name] = data_path(model, task, dataset_root(task, self.data_root), self.spec)
            except Exception as e:  # reported in the row, beside the model's own outcome
                self.throughput[name] = (None, f"data: {one_line(e)}")
        for row in self.rows:
            rate, problem = self.throughput.get(row["task"], (None, None))
            row.update(data_rate=rate, **size)
            if problem and not row["error"]:
                row.update(status="FAIL", error=problem)
        Path(self.spec["rows"]).write_text(json.dumps(self.rows))

    def record(self, name: str, result: Any = None, error: str | None = None) -> None:
        now = time.perf_counter()
        status = "FAIL" if error or result is None else result.status
        row = {"model": self.spec["model"], "task": name, "protocol": self.reg.task(name).protocol, "status": status}
        row.update(seconds=now - self.clock, data_rate=None, peak_mb=self.memory.take(), error=error)
        samples = (
            model_samples(result, self.output, min(result.limit or self.spec["n"], self.spec["n"])) if result else 0
        )
        row.update(samples=samples, note=note(result) if result else "")
        self.rows.append(row)
        self.done.append(name)
        # A full-size run folder holds GBs (last.ckpt with the optimizer state, best.pt): not kept past its row.
        shutil.rmtree(Path(self.spec["cache"]) / "finetune" / self.spec["model"] / name, ignore_errors=True)
        self.clock = now
        Path(self.spec["rows"]).write_text(json.dumps(self.rows))

    def run(self, limit: int, tasks: list[str], extra: list[str]) -> None:
        """One evaluate call for `tasks` (a model built once serves retrieval and probes); after a failure, the
        rest in a new call."""
        from mmbench.api import evaluate

        s = self.spec
        while tasks:
            self.clock, before = time.perf_counter(), len(self.done)
            try:
                evaluate(
                    s["model"], tasks, data="real", data_root=self.data_root, limit=limit, batch_size=s["batch"],
                    accelerator=s["accelerator"], precision=s["precision"], output=self.output, cache_dir=s["cache"],
                    redo=True, overrides=overrides(s) + extra, num_workers=s["workers"], progress=False,
                    registry=self.reg, on_result=lambda result: self.record(result.task, result),
                )  # fmt: skip
                return
            except Exception as e:
                failed = len(self.done) - before
                self.record(tasks[failed], error=one_line(e))
                tasks = tasks[failed + 1 :]


def one_line(e: BaseException) -> str:
    message = str(e).splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {message}"[:300]


def worker(spec_path: Path) -> int:
    import logging

    logging.basicConfig(format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("mmbench").setLevel(logging.INFO)  # into the model's log file
    w = Worker(json.loads(spec_path.read_text()))
    for limit, tasks, extra in w.spec["groups"]:
        w.run(limit, tasks, extra)
    w.memory.stop()
    w.measure_data()
    return 0


# ---- the driver ----------------------------------------------------------------------------------------------


def run_model(model: str, tasks: list[str], args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """One model's tasks in a fresh process; tasks it never reported (a crash, a kill) become failed rows."""
    name = MODELS[model]
    finetune = [t for t in tasks if registry().task(t).protocol == "finetune"]
    others = [t for t in tasks if t not in finetune]
    groups: list[list[Any]] = []  # [limit, tasks, extra overrides]: one evaluate call each
    for t in others + finetune:
        key = [args.finetune_limit if t in finetune else args.limit, TASK_OVERRIDES.get(t, [])]
        if groups and [groups[-1][0], groups[-1][2]] == key and not key[1]:
            groups[-1][1].append(t)
        else:
            groups.append([key[0], [t], key[1]])
    spec = {
        "model": name, "tasks": tasks, "groups": groups, "n": args.n, "batch": args.batch, "steps": args.steps,
        "workers": args.workers, "accelerator": args.accelerator, "precision": args.precision,
        "data_root": str(work / "data"), "output": str(work / "results"), "cache": str(work / "cache"),
        "rows": str(work / f"rows-{model}.json"),
    }  # fmt: skip
    spec_path = work / f"spec-{model}.json"
    spec_path.write_text(json.dumps(spec))
    log = work / "logs" / f"{model}.log"
    log.parent.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")])),
    }
    print(f"[{model}] {', '.join(tasks)} (log: {log})", flush=True)
    with log.open("w") as out:
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", str(spec_path)], stdout=out, stderr=subprocess.STDOUT,
                env=env, timeout=args.timeout,
            )  # fmt: skip
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    rows = json.loads(Path(spec["rows"]).read_text()) if Path(spec["rows"]).is_file() else []
    reported = {r["task"] for r in rows}
    if code != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        why = f"worker {'timed out' if code == 'timeout' else f'exited {code}'}" + (
            " (killed: out of memory?)" if code in (-9, 137) else ""
        )
        for t in tasks:
            if t not in reported:
                rows.append({"model": name, "task": t, "protocol": registry().task(t).protocol, "status": "FAIL",
                             "error": f"{why}: {lines[-1][:200] if lines else 'no output'}"})  # fmt: skip
    return rows


def fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("model", "protocol", "task", "status", "s", "model smp/s", "data smp/s", "bound", "peak MB", "note")
    lines = [head]
    for r in rows:
        model_rate = r.get("samples", 0) / r["seconds"] if r.get("seconds") and r.get("samples") else None
        data_rate = r.get("data_rate")
        bound = "-" if not (model_rate and data_rate) else "model" if model_rate < data_rate else "DATA"
        lines.append((
            r["model"], r["protocol"], r["task"], r["status"], fmt(r.get("seconds")), fmt(model_rate, ".2f"),
            fmt(data_rate, ".1f"), bound, fmt(r.get("peak_mb"), ".0f"), r.get("error") or r.get("note", ""),
        ))  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head) - 1)]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) + "  " + str(line[-1]) for line in lines]
    out.insert(1, "-" * min(160, len(out[0])))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--protocols", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    p.add_argument("--tasks", help="comma-separated task names instead of the protocols' default tasks")
    p.add_argument("--n", type=int, default=8, help="records per split written (and read by the data-path timing)")
    p.add_argument("--limit", type=int, default=4, help="samples per split the model sees (retrieval, probe)")
    p.add_argument("--finetune-limit", type=int, default=2, help="samples per split the model sees (fine-tuning)")
    p.add_argument("--batch", type=int, default=2, help="device batch (fine-tuning: also the effective batch)")
    p.add_argument("--steps", type=int, default=1, help="fine-tuning updates")
    p.add_argument("--workers", type=int, default=1, help="data loader workers")
    p.add_argument("--accelerator", default="cpu", help="cpu | gpu | auto")
    p.add_argument("--precision", help="e.g. bf16-mixed (default 32-true)")
    p.add_argument("--timeout", type=float, help="seconds per model before its process is stopped")
    p.add_argument("--workdir", help="keep data, results and logs here (default: a temporary folder, removed)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(Path(args.worker))
    unknown = sorted(set(args.models.split(",")) - set(MODELS)) + sorted(set(args.protocols.split(",")) - set(TASKS))
    if unknown:
        p.error(f"unknown model or protocol {unknown[0]!r}")
    tasks = args.tasks.split(",") if args.tasks else [t for p_ in args.protocols.split(",") for t in TASKS[p_]]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mmbench-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        print(f"writing real-shape data ({args.n} records per split) to {work / 'data'}", flush=True)
        for r in write_data(tasks, work / "data", args.n):
            print(f"  {r['task']:<14} {r['format']:<19} {r['seconds']:5.1f} s  {r['mb']:6.1f} MB", flush=True)
        rows = []
        for model in args.models.split(","):
            rows += run_model(model, tasks, args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows))
    sizes = {r["model"]: r for r in rows if "params_m" in r}
    for name, r in sizes.items():
        print(
            f"{name}: {r['params_m']:.1f} M parameters (tiny tokenizer's embedding rows), built in {r['build_s']:.1f} s"
        )
    failed = [r for r in rows if r["status"] == "FAIL"]
    print(f"\n{len(rows)} runs, {len(failed)} failed, {time.perf_counter() - start:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
