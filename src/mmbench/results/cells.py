"""How the leaderboard's tables print a cell; shared by the Table-4 renderer (`table`) and the in-context one
(`incontext_table`) so that a number, `n/a` and "not run" look the same in both."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from mmbench.results.schema import TaskResult

NA = "n/a"  # the model cannot do the task
NOT_RUN = "—"
_MAX_DIFF_LINES = 10


def fmt(value: float, decimals: int = 2) -> str:
    """Half-up on the shortest decimal repr, so 78.125 prints 78.13 as a reader expects (format() gives 78.12)."""
    text = str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))
    return text[1:] if text.startswith("-") and Decimal(text) == 0 else text


def md(text: str) -> str:
    """`text` safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass(frozen=True)
class Run:
    """A result as a section of the leaderboard (zero-shot, in-context) receives it."""

    path: Path
    result: TaskResult
    reference: bool  # reference-grade and in the real runs folder: may stand beside published numbers
    header: str  # its label: the model, or "model (synthetic, random init)" for the rest


@dataclass(frozen=True)
class Section:
    """A rendered leaderboard section: its markdown lines and its CSV."""

    markdown: list[str]
    csv: str


def line_differences(path: Path, committed: list[str], fresh: list[str]) -> list[str]:
    """`check`'s report of how a committed file differs from a fresh render: a line each, at most ten."""
    out: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, committed, fresh, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            old = committed[i1 + k] if i1 + k < i2 else None
            new = fresh[j1 + k] if j1 + k < j2 else None
            where = f"{path}:{i1 + k + 1 if old is not None else i2}"
            if old is not None and new is not None:
                out.append(f"{where}: committed {old!r}, fresh render {new!r}")
            elif old is not None:
                out.append(f"{where}: committed line {old!r} is not in a fresh render")
            else:
                out.append(f"{where}: a fresh render adds {new!r}")
    if len(out) > _MAX_DIFF_LINES:
        out = out[:_MAX_DIFF_LINES] + [f"{path}: ... and {len(out) - _MAX_DIFF_LINES} more differing lines"]
    return out
