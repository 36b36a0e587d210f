"""How the leaderboard's tables print a cell; shared by the Table-4 renderer (`table`) and the in-context one
(`incontext_table`) so that a number, `n/a` and "not run" look the same in both."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

NA = "n/a"  # the model cannot do the task
NOT_RUN = "—"


def fmt(value: float, decimals: int = 2) -> str:
    """Half-up on the shortest decimal repr, so 78.125 prints 78.13 as a reader expects (format() gives 78.12)."""
    text = str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))
    return text[1:] if text.startswith("-") and Decimal(text) == 0 else text


def md(text: str) -> str:
    """`text` safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")
