"""Run a plan's jobs through submitit: `local` (a subprocess per job on this machine) or `slurm` (one array per
set of resources). Every job is the same `mmbench.api.evaluate` call an in-process run makes for its (model, task),
so a result does not depend on where it ran.

Preemption and time limits: a job is a `submitit.helpers.Checkpointable`; submitit requeues it (up to
`max_num_timeout` times) and the requeued `evaluate` resumes from what the first attempt left: a result already
written is up to date and skipped, fine-tuning resumes from the last checkpoint of its run folder (named by config
hash and data fingerprint), a probe re-reads the features it cached, and retrieval (minutes) runs again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from mmbench.errors import EXIT_INTERNAL, ConfigError, exit_code, user_message
from mmbench.launch.plan import Job
from mmbench.paths import atomic_write_text

log = logging.getLogger("mmbench")
LAUNCHERS = ("local", "slurm")
MAX_REQUEUES = 3  # submitit's max_num_timeout: attempts after a time-out or preemption


@dataclass
class Outcome:
    """How one job ended: done, skipped (up to date), failed (`error`: its one line), or submitted (--no-wait)."""

    job: Job
    state: str
    error: str | None = None
    exit_code: int | None = None
    job_id: str | None = None
    scores: dict[str, float] | None = None

    def line(self) -> str:
        what = f"{self.job.model} x {self.job.result_name}"
        if self.state == "failed":
            return f"failed     {what}: {self.error}"
        if self.state == "done":
            scores = "  ".join(f"{k}={v:.2f}" for k, v in (self.scores or {}).items())
            return f"done       {what}  {scores}".rstrip()
        if self.state == "submitted":
            return f"submitted  {what}  (job {self.job_id})"
        return f"skipped    {what}  (up to date)"


class EvaluateJob(Checkpointable):
    """The callable a scheduler runs: `mmbench.api.evaluate(**kwargs)` for one (model, task). On failure it leaves
    its one-line error in `error_file` (the launcher reports it) and fails the job for the scheduler too."""

    def __init__(self, kwargs: dict[str, Any], error_file: str):
        self.kwargs = kwargs
        self.error_file = error_file

    def __call__(self) -> list[dict[str, Any]]:
        from mmbench.api import evaluate

        logging.basicConfig(format="%(message)s", stream=sys.stderr)
        logging.getLogger("mmbench").setLevel(logging.INFO)
        try:
            results = evaluate(**self.kwargs)
        except Exception as e:  # not SystemExit: submitit exits that way when it requeues the job
            err = {"error": user_message(e).splitlines()[0], "exit_code": exit_code(e), "type": type(e).__name__}
            atomic_write_text(Path(self.error_file), json.dumps(err) + "\n")
            raise
        return [{"status": r.status, "scores": r.scores, "config_hash": r.config_hash} for r in results]

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """The requeued attempt resumes what this one began: it never starts afresh (`fresh` would discard the
        fine-tuning checkpoints this attempt wrote)."""
        return DelayedSubmission(EvaluateJob({**self.kwargs, "fresh": False}, self.error_file))


@dataclass(frozen=True)
class LaunchOptions:
    """`wait`: block until every submitted job ended and report each (else report them as submitted).
    `parallelism`: jobs at once (local: default 1, they share this machine; slurm: the array's limit, default none).
    `partition`, `account`: SLURM's. `poll_seconds`: how often a local launcher looks at its subprocesses."""

    wait: bool = True
    parallelism: int | None = None
    partition: str | None = None
    account: str | None = None
    poll_seconds: float = 0.5


def launch(jobs: list[Job], launcher: str, folder: Path, options: LaunchOptions = LaunchOptions()) -> list[Outcome]:
    """Submit every job of the plan that must run; up-to-date ones are skipped before submission. Each job's
    submitit files (stdout, stderr, pickles) and its error line, if it fails, lie in `folder`. Returns one Outcome
    per job, in the plan's order; with `options.wait`, prints each as it ends."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    outcomes = {id(j): Outcome(j, "skipped") for j in jobs if not j.to_run}
    todo = [j for j in jobs if j.to_run]
    if todo:
        run = _run_local if launcher == "local" else _run_slurm
        for outcome in run(todo, folder, options):
            outcomes[id(outcome.job)] = outcome
            if options.wait:
                print(outcome.line(), flush=True)
    return [outcomes[id(j)] for j in jobs]


def report(outcomes: list[Outcome], folder: Path) -> tuple[str, int]:
    """The closing summary and the exit status: that of the first failed job (its error's, e.g. 3 for data), else 0."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.state] = counts.get(o.state, 0) + 1
    names = {"skipped": "skipped (up to date)"}
    parts = [f"{n} {names.get(state, state)}" for state, n in counts.items()]
    text = f"{len(outcomes)} jobs: {', '.join(parts)}; logs in {folder}"
    failed = [o for o in outcomes if o.state == "failed"]
    return text, (failed[0].exit_code or EXIT_INTERNAL) if failed else 0


def job_kwargs(job: Job, launcher: str) -> dict[str, Any]:
    """The job's evaluate() call on this launcher. Devices: `--devices` if given; else slurm runs the task's
    `resources.gpus` per node (one process per device, as Lightning expects under SLURM) and local runs one."""
    kwargs = {**job.evaluate_kwargs, "devices": job_devices(job, launcher)}
    if job.resources.nodes > 1:
        if "num_nodes" not in kwargs:  # evaluate's options, as the plan recorded them
            raise ConfigError(
                f"task {job.task!r}: resources.nodes {job.resources.nodes}, but this mmbench runs a task on one node"
            )
        kwargs["num_nodes"] = job.resources.nodes
    return kwargs


def job_devices(job: Job, launcher: str) -> int:
    devices = job.evaluate_kwargs.get("devices")
    if devices is not None:
        return devices
    return max(1, job.resources.gpus) if launcher == "slurm" else 1


def slurm_parameters(job: Job, partition: str | None, account: str | None) -> dict[str, Any]:
    """submitit's (AutoExecutor) parameters for one job: Lightning under SLURM wants one task per device."""
    r, devices = job.resources, job_devices(job, "slurm")
    params: dict[str, Any] = {
        "timeout_min": r.time_minutes,
        "nodes": r.nodes,
        "tasks_per_node": devices,
        "gpus_per_node": devices if r.gpus else 0,
        "cpus_per_task": max(1, r.cpus // devices),
        "mem_gb": r.mem_gb,
        "name": "mmbench",
        "slurm_signal_delay_s": 120,  # time for a last checkpoint before the limit (submitit: USR2, then requeue)
    }
    if partition:
        params["slurm_partition"] = partition
    if account:
        params["slurm_account"] = account
    return params


def _run_local(todo: list[Job], folder: Path, opts: LaunchOptions) -> Iterator[Outcome]:
    """A subprocess per job (submitit's LocalExecutor starts each at submission), at most `parallelism` at once."""
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
    pending, running = list(todo), []
    while pending or running:
        while pending and len(running) < max(1, opts.parallelism or 1):
            job = pending.pop(0)
            kwargs = job_kwargs(job, "local")
            gpus = kwargs["devices"] if kwargs.get("accelerator") != "cpu" and job.resources.gpus else 0
            executor.update_parameters(timeout_min=job.resources.time_minutes, gpus_per_node=gpus, tasks_per_node=1)
            _error_file(folder, job).unlink(missing_ok=True)  # an earlier launch's, in the same folder
            with _child_imports_this_mmbench():
                running.append((job, executor.submit(EvaluateJob(kwargs, str(_error_file(folder, job))))))
        if not opts.wait:
            yield from (Outcome(j, "submitted", job_id=s.job_id) for j, s in running)
            running = []
            continue
        # The result pickle (written atomically) ends a job: the process may take seconds more to tear torch down.
        finished = [(j, s) for j, s in running if s.paths.result_pickle.exists() or s.done()]
        for job, sub in finished:
            running.remove((job, sub))
            yield _outcome(job, sub, folder)
        if not finished:
            time.sleep(opts.poll_seconds)


def _run_slurm(todo: list[Job], folder: Path, opts: LaunchOptions) -> Iterator[Outcome]:
    """One job array per distinct set of parameters (the jobs of an array share them), `parallelism` at once."""
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=MAX_REQUEUES)
    groups: dict[str, list[Job]] = {}
    for job in todo:
        groups.setdefault(json.dumps(slurm_parameters(job, opts.partition, opts.account), sort_keys=True), []).append(
            job
        )
    submitted = []
    for params, members in groups.items():
        executor.update_parameters(**json.loads(params), **_array_limit(opts.parallelism))
        for j in members:
            _error_file(folder, j).unlink(missing_ok=True)
        with _child_imports_this_mmbench(), executor.batch():
            subs = [executor.submit(EvaluateJob(job_kwargs(j, "slurm"), str(_error_file(folder, j)))) for j in members]
        submitted += zip(members, subs)
    for job, sub in submitted:
        if not opts.wait:
            yield Outcome(job, "submitted", job_id=sub.job_id)
            continue
        with contextlib.suppress(Exception):  # a failed job's error is read by _outcome
            sub.wait()
        yield _outcome(job, sub, folder)


def _array_limit(parallelism: int | None) -> dict[str, int]:
    return {"slurm_array_parallelism": parallelism} if parallelism else {}


def _outcome(job: Job, sub: Any, folder: Path) -> Outcome:
    """done, or failed with the job's own one-line error (else the last line submitit saw: a kill, a time-out)."""
    try:
        results = sub.result()
    except Exception as e:
        error_file = _error_file(folder, job)
        if error_file.is_file():
            err = json.loads(error_file.read_text())
            return Outcome(job, "failed", err["error"], err["exit_code"], sub.job_id)
        lines = [line for line in str(e).splitlines() if line.strip()]
        return Outcome(job, "failed", lines[-1] if lines else type(e).__name__, EXIT_INTERNAL, sub.job_id)
    first = results[0] if results else {}
    return Outcome(job, "done", job_id=sub.job_id, scores=first.get("scores"))


def _error_file(folder: Path, job: Job) -> Path:
    return folder / f"{job.key}.error.json"


@contextlib.contextmanager
def _child_imports_this_mmbench() -> Iterator[None]:
    """A job's process (a local subprocess, or a SLURM job, which inherits the submitting environment) imports the
    mmbench that planned it, not whichever one its interpreter would find: its folder goes first on PYTHONPATH."""
    import mmbench

    src = str(Path(mmbench.__file__).resolve().parents[1])
    saved = os.environ.get("PYTHONPATH")
    rest = [p for p in (saved or "").split(os.pathsep) if p and p != src]
    os.environ["PYTHONPATH"] = os.pathsep.join([src, *rest])
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
