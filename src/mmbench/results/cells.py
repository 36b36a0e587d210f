"""How the leaderboard's tables print a cell; shared by the Table-4 renderer (`table`) and the in-context one
(`incontext_table`) so that a number, `n/a` and "not run" look the same in both."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from mmbench.results.schema import TaskResult

NA = "n/a"  # the model cannot do the task
NOT_RUN = "—"


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
