"""Memory of a process tree (a run and its DataLoader workers) from Linux's /proc: shared by the benchmarks.

RSS counts a page shared by forked workers once per process (it overstates a tree); PSS divides a shared page
among the processes that map it, so the tree's PSS is what the tree really holds.
"""

from __future__ import annotations

import os
from pathlib import Path


def children() -> dict[int, list[int]]:
    """pid -> its child pids, for every process visible in /proc."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone since the listing
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the command name may hold spaces and parentheses
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    kids, out, todo = children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; (0, 0) once it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0, 0
    return rss, pss


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of `pid` and its descendants, in bytes."""
    sizes = [memory(p) for p in tree(pid)]
    return sum(s[0] for s in sizes), sum(s[1] for s in sizes)
