"""Sweeps over (model, task) jobs: a run plan (`plan`), printed by `mmbench run --dry-run`, and its execution
through a cluster scheduler's engine, submitit (`launch`: `--launcher local|slurm`).

Layering: `cli -> launch -> api -> protocols -> ...`. The plan asks `mmbench.standing.standing`, the decision `evaluate`
skips on; every job is one `mmbench.api.evaluate` call; nothing here runs a task another way, and nothing below
imports this package. One task across many GPUs and nodes is Lightning's business (`--devices`, `--num-nodes`).
"""

from mmbench.launch.plan import (
    TO_RUN,
    UP_TO_DATE,
    CodeChanges,
    Job,
    counts_for,
    format_plan,
    plan,
    plan_json,
    run_in_process,
)

__all__ = [
    "TO_RUN",
    "UP_TO_DATE",
    "CodeChanges",
    "Job",
    "counts_for",
    "format_plan",
    "plan",
    "plan_json",
    "run_in_process",
]
