"""Rehearsal of a real run: full-size architectures with random weights, one short pass of every protocol, on
real-shape data, with the data path's own throughput beside the model's.

Tests and the demo run tiny presets on 32-px scene images; a real run meets full-size models, 480-px VQA images,
640x480 JPEGs, 1000 classes, 512-token texts and 33-image prompts, and code paths that only those reach. This runs,
for each preset in benchmarks/rehearsal/models/ (the exact architectures of `clip`, `flava`, `beit3-base`, Flamingo
with its ViT-L/14 tower and a 2-layer RedPajama-3B-wide LM, and IDEFICS with its ViT-H/14 tower and a 4-layer
LLaMA-7B-wide LM; random weights, tiny built-in tokenizers), every protocol the model can do at each task's real
resolution, on `mmbench data synth --real-shape` data: zero-shot retrieval (flickr30k, coco), linear probe
(imagenet: 1000 classes; country211: 211 classes, no published val split), fine-tuning (vqav2 at 480 px with
test-dev predictions, snli_ve, hateful_memes, mnli with texts past 512 tokens) and in-context evaluation
(vqav2_fewshot by beam search, hateful_memes_fewshot by log-likelihood, at 8 and 32 shots: `--shots`), each through
`mmbench.api.evaluate` as a user's run would go, with `--limit` caps and 1 update (`--steps`).

    PYTHONPATH=src python benchmarks/rehearsal.py                       # everything; ~1.5 h on 2 CPU cores
    PYTHONPATH=src python benchmarks/rehearsal.py --models clip --protocols finetune --tasks vqav2
    PYTHONPATH=src python benchmarks/rehearsal.py --models flamingo,idefics --protocols incontext --shots 8
    PYTHONPATH=src python benchmarks/rehearsal.py --accelerator gpu --precision bf16-mixed --limit 64 --batch 16

Each model runs in its own process (a crash or an out-of-memory kill ends only that model's rows). Per (model,
task) the table gives: status (a failure with its one-line error), seconds of the evaluate call (model builds
included), the samples the model processed (training, selection, evaluation and prediction; in-context: queries x
trials) per second of that time without the model builds, the data path's samples per second (decode + transform
+ collate in the loader's workers over the same split, no model; in-context: the protocol's own prompt builder,
which decodes every demonstration's image, shots+1 per query), which of the two bounds the run, and the peak
memory of the process tree (PSS: summed RSS would count the model's pages once more for every forked loader
worker). A failed row makes the exit status 1. Fine-tuning rows also check that the training table is lazy (the
reader offers random access): a materialised table holds every decoded training image, which at VQAv2's 443,757
questions is hundreds of GB. In-context rows are named as their results (`vqav2_fewshot-32shot`) and note the
prompts' length in the model's own tokens.
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
from rehearsal_data import DataPath, data_path, prompt_tokens, write_data  # noqa: E402, F401

HERE = Path(__file__).resolve().parent
PRESETS = HERE / "rehearsal"
MODELS = {"clip": "clip-rehearsal", "flava": "flava-rehearsal", "beit3-base": "beit3-base-rehearsal"}
MODELS.update(flamingo="flamingo-rehearsal", idefics="idefics-rehearsal")
# Per-task settings beyond the shared recipe (an evaluate call applies its overrides to all its tasks, so these
# tasks get calls of their own). VQAv2's answer vocabulary keeps answers seen 9 times (~3,129 on the real data): at
# a few questions per split that leaves only <unk>, a 1-way head; every answer seen keeps a real multi-answer head.
TASK_OVERRIDES = {"vqav2": ["task.data.options.vqa.min_answer_count=1"]}
TASKS = {
    "retrieval": ["flickr30k", "coco"],
    "linear_probe": ["imagenet", "country211"],
    "finetune": ["vqav2", "snli_ve", "hateful_memes", "mnli"],
    # Generation (beam search) and log-likelihood. Captioning (coco_fewshot, flickr30k_fewshot) joins the defaults
    # with its CIDEr (`mmbench.metrics.cider`, not in this branch's base): without it, a row fails at the trial's end
    # with "ModuleNotFoundError: No module named 'mmbench.metrics.cider'".
    "incontext": ["vqav2_fewshot", "hateful_memes_fewshot"],
}
SHOTS = (8, 32)  # in-context: the shot counts that load the context (32 shots: 33 images, ~1,000 tokens per query)


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
    if result.protocol == "incontext":  # queries, once per trial (each with its demonstrations' images)
        return result.n_samples * len(d.get("trials", [])) if "shots" in d else 0
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
    if result.protocol == "incontext":
        k, shown = d.get("demonstrations_per_query"), d.get("shots", 0) > 0
        return (
            f"{d.get('shots')} shots x {len(d.get('trials', []))} trial(s), {k} {d.get('demonstrations')} "
            f"demonstrations/query{'' if shown else ' (text only)'}, {k + 1 if shown else 1} images/query"
        )
    return f"{d.get('n_images')} images x {d.get('n_texts', 0) // max(1, d.get('n_images', 1))} captions"


class Worker:
    """One model's tasks in this process; rows go to `spec["rows"]`, rewritten after each task, so that a crash
    keeps what was done."""

    def __init__(self, spec: dict[str, Any]):
        self.spec, self.reg, self.memory, self.rows = spec, registry(), PeakMemory(), []
        self.data_root, self.output = Path(spec["data_root"]), Path(spec["output"])
        self.throughput: dict[str, DataPath] = {}
        self.done: list[str] = []
        self.labels: dict[str, str] = {}  # task name -> its row's name in the evaluate call under way
        self.built = 0.0  # model build seconds of the evaluate call under way, already charged to a row
        self.clock = time.perf_counter()

    def measure_data(self) -> None:
        """The data path of every task, with the transforms and tokenizer of the model (built once for this,
        after the runs, so that the rows' peak memory is the runs' own); fills in the rows already written."""
        from mmbench.config import parse_overrides
        from mmbench.data import dataset_root
        from mmbench.models import build_model

        start = time.perf_counter()
        model = build_model(self.reg.model(self.spec["model"]))
        size = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "build_s": time.perf_counter() - start}
        na = {row["task"] for row in self.rows if row["status"] == "n/a"}  # e.g. in-context for CLIP: no model run
        for _, tasks, extra in self.spec["groups"]:
            for name, label in row_labels(self.reg, tasks, extra).items():
                if label in na:
                    continue
                task = self.reg.task(name, parse_overrides(overrides(self.spec) + extra)["task"])
                try:
                    self.throughput[label] = data_path(model, task, dataset_root(task, self.data_root), self.spec)
                except Exception as e:  # reported in the row, beside the model's own outcome
                    self.throughput[label] = DataPath(None, f"data: {one_line(e)}")
        for row in self.rows:
            rate, problem, more = self.throughput.get(row["task"], DataPath(None, None))
            row.update(data_rate=rate, **size)
            if more and row["status"] == "ok":
                row["note"] = f"{row['note']}, {more}"
            if problem and not row["error"]:
                row.update(status="FAIL", error=problem)
        Path(self.spec["rows"]).write_text(json.dumps(self.rows))

    def record(self, name: str, result: Any = None, error: str | None = None) -> None:
        now = time.perf_counter()
        status = "FAIL" if error or result is None else result.status
        label = self.labels.get(name, name)
        row = {"model": self.spec["model"], "task": label, "protocol": self.reg.task(name).protocol, "status": status}
        row.update(seconds=now - self.clock, data_rate=None, peak_mb=self.memory.take(), error=error)
        # The call's model build (once per evaluate call: in-context runs one call per shot count) is in the
        # first row's seconds; the model's rate leaves it out.
        build = (result.provenance or {}).get("model_build_seconds", 0.0) - self.built if result else 0.0
        self.built += build
        row["model_build_s"] = build
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
        self.labels = row_labels(self.reg, tasks, extra)
        while tasks:
            self.clock, before, self.built = time.perf_counter(), len(self.done), 0.0
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


def row_labels(reg: Any, tasks: list[str], extra: list[str]) -> dict[str, str]:
    """Task name -> its row's name under the group's overrides: the result's file stem, which names an in-context
    run's shots (`vqav2_fewshot-8shot`)."""
    from mmbench.config import parse_overrides
    from mmbench.schema import result_name

    task_overrides = parse_overrides(extra)["task"]
    return {t: result_name(reg.task(t, task_overrides)) for t in tasks}


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
    name, reg = MODELS[model], registry()
    groups = plan(reg, tasks, args)
    labels = {label: t for _, group, extra in groups for t, label in row_labels(reg, group, extra).items()}
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
        for label, t in labels.items():
            if label not in reported:
                rows.append({"model": name, "task": label, "protocol": reg.task(t).protocol, "status": "FAIL",
                             "error": f"{why}: {lines[-1][:200] if lines else 'no output'}"})  # fmt: skip
    return rows


def plan(reg: Any, tasks: list[str], args: argparse.Namespace) -> list[list[Any]]:
    """[limit, tasks, extra overrides] per evaluate call: the tasks that share a limit and need no overrides of
    their own together; fine-tuning at its own limit; in-context tasks once per shot count."""
    protocol = {t: reg.task(t).protocol for t in tasks}
    groups: list[list[Any]] = []
    later = {"finetune": 1, "incontext": 2}  # retrieval and probes first, as one call where they can
    for t in sorted(tasks, key=lambda t: later.get(protocol[t], 0)):
        if protocol[t] == "incontext":
            continue
        key = [args.finetune_limit if protocol[t] == "finetune" else args.limit, TASK_OVERRIDES.get(t, [])]
        if groups and [groups[-1][0], groups[-1][2]] == key and not key[1]:
            groups[-1][1].append(t)
        else:
            groups.append([key[0], [t], key[1]])
    incontext = [t for t in tasks if protocol[t] == "incontext"]
    if incontext:
        groups += [[args.incontext_limit, incontext, [f"task.incontext.shots={s}"]] for s in args.shots]
    return groups


def data_sizes(reg: Any, tasks: list[str], args: argparse.Namespace) -> dict[str, int]:
    """Records per split for each task: `--n`, and for in-context tasks at least the largest shot count, since a
    query's demonstrations are distinct training records (OpenFlamingo draws them without replacement)."""
    return {t: max(args.n, *args.shots) if reg.task(t).protocol == "incontext" else args.n for t in tasks}


def fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("model", "protocol", "task", "status", "s", "model smp/s", "data smp/s", "bound", "peak MB", "note")
    lines = [head]
    for r in rows:
        busy = (r.get("seconds") or 0) - r.get("model_build_s", 0)
        model_rate = r["samples"] / busy if busy > 0 and r.get("samples") else None
        data_rate = r.get("data_rate")
        bound = "-" if not (model_rate and data_rate) else "model" if model_rate < data_rate else "DATA"
        lines.append((
            r["model"], r["protocol"], r["task"], r["status"], fmt(r.get("seconds")), fmt(model_rate, ".3g"),
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
    p.add_argument("--incontext-limit", type=int, default=2, help="queries per in-context run (each: shots+1 images)")
    p.add_argument("--shots", default=",".join(map(str, SHOTS)), help="in-context shot counts, comma-separated")
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
    try:
        args.shots = [int(s) for s in args.shots.split(",")]
    except ValueError:
        p.error(f"--shots {args.shots!r}: comma-separated whole numbers, e.g. 8,32")
    tasks = args.tasks.split(",") if args.tasks else [t for p_ in args.protocols.split(",") for t in TASKS[p_]]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mmbench-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        print(f"writing real-shape data to {work / 'data'}", flush=True)
        reg = registry()
        for r in write_data(tasks, work / "data", data_sizes(reg, tasks, args), reg):
            print(f"  {r['task']:<22} {r['format']:<19} {r['n']:4d}/split {r['seconds']:5.1f} s  {r['mb']:6.1f} MB",
                  flush=True)  # fmt: skip
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
