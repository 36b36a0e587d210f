"""`mmbench` command line: argument parsing only; the work is done by `mmbench.api` and friends."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mmbench import __version__
from mmbench.errors import (
    EXIT_CHECK_FAILED,
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    MMBenchError,
    exit_code,
    user_message,
)


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES.items())
    return f"exit status:\n{codes}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmbench",
        description="Benchmark vision-and-language models on FLAVA's 35 tasks",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"mmbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="evaluate models on tasks and write result JSONs",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--model",
        action="append",
        required=True,
        help="model preset, spec (hf:ID, timm:NAME, open_clip:ARCH/TAG), preset YAML file or plug-in (repeatable)",
    )
    run.add_argument("--task", action="append", default=[], help="task name (repeatable)")
    run.add_argument("--group", action="append", default=[], help="task group, e.g. retrieval (repeatable)")
    run.add_argument("--data", choices=["real", "synthetic"], default="real", help="real datasets or generated ones")
    run.add_argument("--data-root", help="folder holding one sub-folder per task (default $MMBENCH_DATA)")
    run.add_argument("--limit", type=int, help="evaluate only the first N samples (smoke tests; never in the table)")
    run.add_argument("--batch-size", type=int, help="per-device batch size (default: the task's)")
    run.add_argument(
        "--devices",
        type=int,
        help="devices (processes) to run on; >1 uses DDP (default 1; --launcher slurm: the task's resources.gpus)",
    )
    run.add_argument(
        "--num-nodes", type=int, default=1, help="nodes (machines) of --devices processes each, under torchrun or SLURM"
    )
    run.add_argument(
        "--strategy",
        default="auto",
        help="auto (DDP when more than one process) | ddp | fsdp (shard the model's layers) | deepspeed",
    )
    run.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    run.add_argument("--precision", help="e.g. bf16-mixed, 16-mixed (default 32-true)")
    run.add_argument("--seed", type=int, help="the run's seed (default 0)")
    run.add_argument(
        "--seeds",
        metavar="S,S,...",
        help="several seeds, e.g. 0,1,2: fine-tuning and the probe's hold-out run once per seed, and the result holds "
        "their mean, standard deviation and per-seed scores (not with --seed)",
    )
    run.add_argument(
        "--logger",
        choices=["csv", "tensorboard", "wandb"],
        help="log fine-tuning's training loss, learning rate and validation metrics (wandb: offline unless "
        "WANDB_MODE or WANDB_API_KEY say otherwise)",
    )
    run.add_argument("--log-dir", help="where --logger writes (default <output>/logs)")
    run.add_argument("--output", help="results folder (default results/, or results/synthetic/ for --data synthetic)")
    run.add_argument(
        "--redo",
        action="store_true",
        help="run again even when an up-to-date result exists "
        "(fine-tuning resumes or re-evaluates its run folder of the same config: --fresh retrains)",
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="like --redo, and fine-tuning discards its run folder (checkpoints, a corrupt one included) and "
        "trains from the start instead of resuming",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field: model.max_text_length=64, task.retrieval.chunk_size=256",
    )
    run.add_argument(
        "--log-samples",
        action="store_true",
        help="also write each task's per-sample predictions to <output>/samples/<model>/<task>.jsonl",
    )
    run.add_argument("--num-workers", type=int, help="data loader workers per device")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--cache-dir", help="features, synthetic data and downloads (default ~/.cache/mmbench)")
    run.add_argument("--debug", action="store_true", help="show full tracebacks")
    _launch_arguments(run)

    lst = sub.add_parser("list", help="list models, tasks or groups")
    lst.add_argument("what", choices=["models", "tasks", "groups"])
    lst.add_argument("--debug", action="store_true")

    table = sub.add_parser("table", help="render the leaderboard (markdown + CSV)")
    table.add_argument("--results", default="results", help="results folder (default results/)")
    table.add_argument(
        "--reported",
        help="a folder of further reported columns (<name>.json) beside the paper's numbers that ship with mmbench; "
        "a file named like a shipped one replaces it, a table4.yaml there replaces the layout",
    )
    table.add_argument("--out", help="markdown file to write (default <results>/LEADERBOARD.md; CSV beside it)")
    table.add_argument("--check", action="store_true", help="exit 1 if the committed file differs from a fresh render")
    table.add_argument("--print", dest="print_", action="store_true", help="also print the markdown")
    table.add_argument(
        "--no-plots",
        action="store_true",
        help="no pictures: neither drawn into plots/ beside the markdown nor embedded in it (nor checked)",
    )
    table.add_argument("--debug", action="store_true")

    cmp = sub.add_parser(
        "compare", help="per-score differences between two results folders; exit 1 beyond --tol or on a missing result"
    )
    cmp.add_argument("a", help="results folder A (holds runs/<model>/<task>.json, e.g. results/synthetic)")
    cmp.add_argument("b", help="results folder B")
    cmp.add_argument(
        "--tol", type=float, default=0.0, help="largest |A - B| that passes, in score points (0-100; default 0: exact)"
    )
    cmp.add_argument(
        "--subset", action="store_true", help="A re-runs part of B: results of B that A lacks pass (default: they fail)"
    )
    cmp.add_argument("--debug", action="store_true")

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="write a small synthetic dataset in a task's real format")
    synth.add_argument("--task", required=True)
    synth.add_argument("--out", required=True)
    synth.add_argument("--n", type=int, help="number of samples (default: the task's)")
    synth.add_argument("--seed", type=int, help="generator seed (default 0)")
    synth.add_argument("--format", help="one of the task's accepted formats (default: its first)")
    synth.add_argument(
        "--real-shape",
        action="store_true",
        help="the published layout's splits, real image sizes and formats and class counts; --n records per split",
    )
    synth.add_argument("--debug", action="store_true")
    return p


# `run` options that make it a plan of jobs (see _launch); the ones after the fourth need --launcher.
LAUNCH_FLAGS = (
    *("dry_run", "launcher", "changed_since", "json"),
    *("no_wait", "array_parallelism", "slurm_partition", "slurm_account"),
)


def _launch_arguments(run: argparse.ArgumentParser) -> None:
    sweep = run.add_argument_group("plans and launchers (one job per model and task, see README: Scaling out)")
    sweep.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        help="run each (model, task) as its own job through submitit: local = a subprocess each on this machine, "
        "slurm = job arrays with the task's resources (default: all in this process)",
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="print the plan (per job: config hash, up to date or why it runs)"
    )
    sweep.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    sweep.add_argument(
        "--changed-since",
        metavar="GIT_REF",
        help="also run jobs whose result is up to date but older than a change of mmbench's code since GIT_REF "
        "that can move its numbers",
    )
    sweep.add_argument("--no-wait", action="store_true", help="with --launcher: submit and return")
    sweep.add_argument(
        "--array-parallelism", type=int, metavar="N", help="jobs at once (local: default 1; slurm: the array's limit)"
    )
    sweep.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition of the jobs")
    sweep.add_argument("--slurm-account", metavar="NAME", help="SLURM account charged for the jobs")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    logging.getLogger("mmbench").setLevel(logging.INFO)
    try:
        commands = {"run": _run, "list": _list, "table": _table, "compare": _compare, "data": _data}
        return commands[args.command](args)
    except MMBenchError as e:
        if args.debug:
            raise
        print(f"mmbench: error: {user_message(e)}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("mmbench: interrupted; results already written are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            raise
        where = f" ({type(e).__name__})" if not isinstance(e, (OSError, ValueError)) else ""
        print(
            f"mmbench: error: {user_message(e).splitlines()[0]}{where} [--debug shows the traceback]", file=sys.stderr
        )
        return exit_code(e)


def _evaluate_options(args: argparse.Namespace) -> dict[str, Any]:
    """`mmbench.api.evaluate`'s keyword options from `run`'s arguments (`--devices` left None for a launcher)."""
    from mmbench.seeds import parse_seeds

    return dict(
        data=args.data,
        data_root=args.data_root,
        limit=args.limit,
        batch_size=args.batch_size,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        accelerator=args.accelerator,
        precision=args.precision,
        seed=args.seed,
        seeds=parse_seeds(args.seeds) if args.seeds is not None else None,
        output=args.output,
        redo=args.redo,
        fresh=args.fresh,
        overrides=args.overrides,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        cache_dir=args.cache_dir,
        log_samples=args.log_samples,
        logger=args.logger,
        log_dir=args.log_dir,
    )


def _run(args: argparse.Namespace) -> int:
    from mmbench.api import evaluate

    if not args.task and not args.group:
        print("mmbench: error: give --task NAME or --group NAME (see `mmbench list tasks`)", file=sys.stderr)
        return EXIT_CONFIG
    if any(getattr(args, flag) not in (None, False) for flag in LAUNCH_FLAGS):
        return _launch(args)
    options = _evaluate_options(args)
    options["devices"] = 1 if args.devices is None else args.devices
    results = evaluate(args.model, args.task, groups=args.group, **options)
    if _rank() == 0:
        print(summary_table(results))
    return 0


def _launch(args: argparse.Namespace) -> int:
    """The run as a plan of (model, task) jobs: printed (--dry-run), run through a launcher, or, for
    --changed-since alone, run here job by job."""
    from mmbench.launch import format_plan, plan, plan_json, run_in_process

    usage = "--json goes with --dry-run" if args.json and not args.dry_run else None
    for flag in LAUNCH_FLAGS[4:]:
        if getattr(args, flag) not in (None, False) and not args.launcher:
            usage = f"--{flag.replace('_', '-')} goes with --launcher"
    if usage:
        print(f"mmbench: error: {usage}", file=sys.stderr)
        return EXIT_CONFIG
    options = _evaluate_options(args)
    jobs = plan(args.model, args.task, groups=args.group, changed_since=args.changed_since, **options)
    if args.dry_run:
        print(plan_json(jobs) if args.json else format_plan(jobs))
        return 0
    if not args.launcher:
        results = run_in_process(jobs)
        print(summary_table(results))
        return 0
    from datetime import datetime

    from mmbench.api import default_output
    from mmbench.launch.executors import LaunchOptions, launch, report

    output = Path(args.output) if args.output else default_output(args.data)
    folder = output / "launch" / datetime.now().strftime("%Y%m%d-%H%M%S")
    opts = LaunchOptions(not args.no_wait, args.array_parallelism, args.slurm_partition, args.slurm_account)
    outcomes = launch(jobs, args.launcher, folder, opts)
    text, code = report(outcomes, folder)
    print(text)
    return code


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


def summary_table(results: list[Any]) -> str:
    """One line per (model, task): status, every score, primary metric, samples, seconds."""
    rows = [("model", "task", "data", "status", "scores (0-100)", "n", "seconds")]
    for r in results:
        spread = {k: f"±{v:.2f}" for k, v in r.scores_std.items()}  # several seeds: mean ± sample std
        scores = "  ".join(f"{k}={v:.2f}{spread.get(k, '')}" for k, v in r.scores.items())
        scores = scores if r.status == "ok" else (r.reason or "")
        data = r.data_source + (f", limit {r.limit}" if r.limit else "")
        rows.append((r.model, r.task, data, r.status, scores, str(r.n_samples), f"{r.provenance['wall_seconds']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    from mmbench.config import Registry

    reg = Registry()
    if args.what == "models":
        for name in sorted(reg.model_files):
            cfg = reg.model(name, check=False)
            tag = " [random weights]" if cfg.random_init else ""
            print(f"{name:<16} {cfg.checkpoint or '-':<40} {cfg.description}{tag}")
        from mmbench.models.specs import listing

        print("\n".join(listing()))
    elif args.what == "tasks":
        for name in sorted(reg.task_files, key=lambda n: (reg.task_files[n].parent.name, n)):
            cfg = reg.task(name)
            print(f"{name:<16} {cfg.domain:<11} {cfg.protocol:<13} {cfg.data.format:<16} {cfg.description}")
    else:
        for name, members in reg.groups.items():
            print(f"{name:<12} {len(members):>3} tasks: {', '.join(members)}")
    return 0


def _table(args: argparse.Namespace) -> int:
    from mmbench.errors import DataError
    from mmbench.results import table

    results = Path(args.results)
    if not results.is_dir():
        raise DataError(f"--results {results}: no such folder (`mmbench run` writes to results/ or --output DIR)")
    if not any(results.glob("runs/*/*.json")) and not any(results.glob("synthetic/runs/*/*.json")):
        raise DataError(f"--results {results}: no results in it (expected runs/<model>/<task>.json there)")
    out = Path(args.out) if args.out else results / "LEADERBOARD.md"
    board = table.render(results, Path(args.reported) if args.reported else None, plots=not args.no_plots, cost=True)
    if args.check:
        diffs = table.check(board, out)
        if diffs:
            print(f"mmbench: {out} is out of date; run `mmbench table` and commit it:", file=sys.stderr)
            for d in diffs:
                print(f"  {d}", file=sys.stderr)
            return EXIT_CHECK_FAILED
        print(f"{out} is up to date")
        return 0
    table.write(board, out)
    if args.print_:
        print(board.markdown)
    written = [out, out.with_suffix(".csv")]
    written += [table.zeroshot_csv_path(out)] if board.zeroshot_csv else []
    written += [table.incontext_csv_path(out)] if board.incontext_csv else []
    written += [table.cost_path(out)] if board.cost else []
    pictures = (
        f" and {len(board.pictures)} pictures (PNG + SVG) in {out.parent / table.PLOTS_DIR}" if board.pictures else ""
    )
    print(f"wrote {', '.join(str(p) for p in written)}{pictures}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from mmbench.results.compare import compare

    result = compare(args.a, args.b, tol=args.tol, subset=args.subset)
    print(result.table())
    if not result.ok:
        names = [f"{r.model}/{r.task}{'/' + r.score if r.score else ''} ({r.status})" for r in result.failures]
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        print(f"mmbench: compare: {len(names)} failing: {', '.join(names[:5])}{more}", file=sys.stderr)
        return 1
    return 0


def _data(args: argparse.Namespace) -> int:
    from mmbench.config import Registry
    from mmbench.data import synthetic

    task = Registry().task(args.task)
    accepted = [task.data.format, *task.data.alt_formats]
    if args.format and args.format not in accepted:
        print(f"mmbench: error: task {task.name!r} reads {', '.join(accepted)}, not {args.format!r}", file=sys.stderr)
        return EXIT_CONFIG
    out = synthetic.write(task, Path(args.out), fmt=args.format, n=args.n, seed=args.seed, real_shape=args.real_shape)
    shape = ", real shape" if args.real_shape else ""
    print(f"wrote synthetic {task.name} ({args.format or task.data.format}{shape}) to {out}")
    return 0
