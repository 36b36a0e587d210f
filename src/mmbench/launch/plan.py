"""The run plan: one `Job` per (model, task), each knowing whether its stored result still stands.

The decision is `mmbench.standing.standing`, the one `evaluate` skips on (same config hash, same data fingerprint), so a
plan never disagrees with what a run would do. A dry run (`mmbench run --dry-run`) prints the plan and builds
nothing: no model, no synthetic data. With `changed_since`, a result that stands on its config and data is still
re-run when mmbench's code that can move its numbers changed since that git ref (`CodeChanges`).
"""

from __future__ import annotations

import inspect
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmbench import api, paths
from mmbench import seeds as seeding
from mmbench.config import Registry, to_dict
from mmbench.errors import ConfigError
from mmbench.results import store
from mmbench.schema import PROTOCOLS, ModelConfig, Resources, TaskConfig, result_name
from mmbench.standing import Standing, standing

TO_RUN, UP_TO_DATE = "to run", "up to date"
# Code under src/mmbench/ that never moves a number: argument parsing, errors, paths, launching, result files and
# tables. A change elsewhere counts for every job, except another protocol's own file (`protocols/<protocol>.py`).
NUMBER_NEUTRAL = ("cli.py", "__main__.py", "errors.py", "paths.py", "launch/", "results/")


@dataclass
class Job:
    """One (model, task): what it is, whether it must run and why, what it asks a scheduler for, and the one
    `mmbench.api.evaluate` call (`evaluate_kwargs`) that runs it, wherever it runs."""

    model: str
    task: str
    result_name: str
    protocol: str
    config_hash: str
    result_path: Path
    status: str  # TO_RUN | UP_TO_DATE
    reason: str  # up to date | new | config changed | data changed | unreadable result | code changed | redo
    resources: Resources
    data_source: str
    data_root: Path
    data_fingerprint: str | None  # None: the data cannot be opened (yet)
    evaluate_kwargs: dict[str, Any]
    changed_files: list[str] = field(default_factory=list)  # code changed: the files that count for this job

    @property
    def to_run(self) -> bool:
        return self.status == TO_RUN

    @property
    def key(self) -> str:
        """A file-name-safe name for the job's logs: `<model>__<result name>`."""
        return f"{self.model}__{self.result_name}".replace("/", "_")

    def why(self) -> str:
        if self.reason == "code changed":
            more = f" +{len(self.changed_files) - 2}" if len(self.changed_files) > 2 else ""
            return f"code changed: {', '.join(self.changed_files[:2])}{more}"
        if self.to_run and self.data_fingerprint is None and self.data_source == "real":
            return f"{self.reason}; no data at {self.data_root}"
        return self.reason

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": self.task,
            "result_name": self.result_name,
            "protocol": self.protocol,
            "config_hash": self.config_hash,
            "status": self.status,
            "reason": self.reason,
            "why": self.why(),
            "result_path": str(self.result_path),
            "data_source": self.data_source,
            "data_root": str(self.data_root),
            "data_fingerprint": self.data_fingerprint,
            "changed_files": self.changed_files,
            "resources": to_dict(self.resources),
        }


def plan(
    models: str | list[str],
    tasks: str | list[str] = (),
    *,
    groups: str | list[str] = (),
    changed_since: str | None = None,
    registry: Registry | None = None,
    code_dir: Path | None = None,
    **options: Any,
) -> list[Job]:
    """One Job per (model, task), in `evaluate`'s order. `options` are `mmbench.api.evaluate`'s keyword arguments
    (data, data_root, limit, seed, output, redo, overrides, ...); each job's `evaluate_kwargs` hold them for its
    (model, task). Nothing is built or written: `evaluate` decides again, identically, when the job runs.
    `changed_since`: a git ref; an up-to-date result made before a change of code that counts for it is re-run."""
    opts = {**evaluate_defaults(), "devices": None, **options}  # devices: None = the launcher's choice
    unknown = sorted(set(opts) - set(evaluate_defaults()))
    if unknown:
        raise TypeError(f"plan() got unknown evaluate options: {', '.join(unknown)}")
    models = [models] if isinstance(models, str) else list(models)
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    groups = [groups] if isinstance(groups, str) else list(groups)
    # evaluate's own checks, so that a bad option fails here and not once per submitted job
    api.check_options(
        opts["data"],
        opts["limit"],
        opts["batch_size"],
        1 if opts["devices"] is None else opts["devices"],
        opts["num_workers"],
    )
    output = Path(opts["output"]) if opts["output"] is not None else api.default_output(opts["data"])
    code = CodeChanges(changed_since, code_dir) if changed_since else None
    with paths.cache_override(opts["cache_dir"]):  # as in evaluate: specs memoise their weights' digests there
        model_cfgs, task_cfgs = api.resolve_configs(models, tasks, groups, opts["overrides"], registry or Registry())
        api.check_synthetic_options(task_cfgs, opts["data"])
        cache = paths.cache_dir()
        jobs = []
        for mcfg in model_cfgs:
            for tcfg in task_cfgs:
                state = standing(
                    mcfg,
                    tcfg,
                    output,
                    opts["data"],
                    opts["data_root"],
                    cache,
                    seeds=seeding.resolve(opts["seed"], opts["seeds"]),
                    limit=opts["limit"],
                    precision=opts["precision"],
                    prepare=False,
                )
                jobs.append(_job(mcfg, tcfg, state, output, opts, code))
    return jobs


def _job(
    mcfg: ModelConfig, tcfg: TaskConfig, state: Standing, output: Path, opts: dict, code: CodeChanges | None
) -> Job:
    job = Job(
        model=mcfg.name,
        task=tcfg.name,
        result_name=result_name(tcfg),
        protocol=tcfg.protocol,
        config_hash=state.config_hash,
        result_path=store.result_path(output, mcfg.name, result_name(tcfg)),
        status=UP_TO_DATE if state.up_to_date else TO_RUN,
        reason=state.reason,
        resources=tcfg.resources,
        data_source=state.data_source,
        data_root=state.data_root,
        data_fingerprint=state.data_fingerprint,
        evaluate_kwargs={**opts, "model": mcfg.name, "tasks": [tcfg.name], "groups": [], "output": output},
    )
    if state.up_to_date and (opts["redo"] or opts["fresh"]):
        job.status, job.reason = TO_RUN, "redo"
    elif state.up_to_date and code is not None:
        job.changed_files = code.for_result(tcfg.protocol, state.result.provenance.get("git_commit"))
        if job.changed_files:  # its config and data stand: only a redo runs it again
            job.status, job.reason = TO_RUN, "code changed"
            job.evaluate_kwargs["redo"] = True
    return job


def run_in_process(jobs: list[Job]) -> list[Any]:
    """The plan in this process, job by job (what `--changed-since` runs without a launcher): every job that must
    run is its own `evaluate` call; up-to-date ones are skipped. The first failure ends the run, as in `evaluate`."""
    results = []
    for job in (j for j in jobs if j.to_run):
        kwargs = {
            **job.evaluate_kwargs,
            "devices": 1 if job.evaluate_kwargs["devices"] is None else job.evaluate_kwargs["devices"],
        }
        results += api.evaluate(**kwargs)
    return results


def evaluate_defaults() -> dict[str, Any]:
    """`mmbench.api.evaluate`'s keyword options and their defaults; the objects a job cannot carry to another process
    (a registry, a callback) are not among them."""
    params = inspect.signature(api.evaluate).parameters.items()
    return {k: p.default for k, p in params if p.kind == p.KEYWORD_ONLY and k not in ("registry", "on_result")}


class CodeChanges:
    """Which files of mmbench's code (paths under `src/mmbench/`) changed since a git ref, in the working tree.

    A result counts as made by older code when a file that can move its numbers (`counts_for`) changed since `ref`
    and also differs between the commit the result records (`provenance.git_commit`) and now: a result already made
    by the new code is not re-run again. A result whose commit is unknown here or was made with uncommitted changes
    (`+dirty`) counts every change since `ref`."""

    def __init__(self, ref: str, code_dir: Path | None = None):
        self.code_dir = Path(code_dir) if code_dir is not None else Path(__file__).resolve().parents[1]
        self.ref = ref
        self.since_ref = self._diff(ref, f"--changed-since {ref}")
        self._by_commit: dict[str, list[str] | None] = {}

    def _diff(self, ref: str, what: str) -> list[str]:
        try:
            out = subprocess.run(
                ["git", "--no-optional-locks", "diff", "--name-only", "--relative", ref, "--", "."],
                cwd=self.code_dir,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise ConfigError(f"{what}: cannot run git in {self.code_dir} ({e})") from None
        if out.returncode != 0:
            reason = (out.stderr.strip().splitlines() or ["git diff failed"])[0]
            raise ConfigError(f"{what}: {reason} (a git ref of the mmbench checkout at {self.code_dir})")
        return sorted(line for line in out.stdout.splitlines() if line)

    def for_result(self, protocol: str, made_by: str | None) -> list[str]:
        """The changed files that count for a result of `protocol` made at commit `made_by`."""
        files = self.since_ref
        if made_by and not made_by.endswith("+dirty"):
            if made_by not in self._by_commit:
                try:
                    self._by_commit[made_by] = self._diff(made_by, f"commit {made_by}")
                except ConfigError:  # a commit this checkout does not have (a shallow clone, another fork)
                    self._by_commit[made_by] = None
            since_result = self._by_commit[made_by]
            if since_result is not None:
                files = sorted(set(files) & set(since_result))
        return [f for f in files if counts_for(f, protocol)]


def counts_for(path: str, protocol: str) -> bool:
    """Can a change of `path` (relative to src/mmbench/) move the numbers of a task of `protocol`?"""
    if path.startswith(NUMBER_NEUTRAL):
        return False
    if path.startswith("protocols/"):
        stem = Path(path).stem
        return stem == protocol or stem not in PROTOCOLS  # shared helpers (base, features, logreg) count for all
    return True


def format_plan(jobs: list[Job]) -> str:
    """One line per job: model, task, config hash, status (why), resources; then the counts."""
    rows = [("model", "task", "config hash", "status", "resources")]
    for j in jobs:
        status = j.status if not j.to_run else f"{j.status} ({j.why()})"
        rows.append((j.model, j.result_name, j.config_hash, status, format_resources(j.resources)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n_run = sum(j.to_run for j in jobs)
    lines.append(f"{len(jobs)} jobs: {n_run} to run, {len(jobs) - n_run} up to date")
    return "\n".join(lines)


def format_resources(r: Resources) -> str:
    hours, minutes = divmod(r.time_minutes, 60)
    nodes = f" x {r.nodes} nodes" if r.nodes > 1 else ""
    return f"{r.gpus} gpu{nodes}, {r.cpus} cpu, {r.mem_gb} GB, {hours}:{minutes:02d} h"


def plan_json(jobs: list[Job]) -> str:
    n_run = sum(j.to_run for j in jobs)
    summary = {"jobs": len(jobs), "to_run": n_run, "up_to_date": len(jobs) - n_run}
    return json.dumps({"summary": summary, "jobs": [j.to_json() for j in jobs]}, indent=2)
