"""How every report writes an amount of money and a price ratio: one convention, said in one legend.

Why one module: ``calibrate``, ``eval``, ``spend`` and ``compare`` used to print the same fact in opposite directions
("cost ratio 0.44x COSTLIER", "1.15x its $ per request", "it costs 0.87x the cascade") and money as ``1E-8``,
``0E-12`` or ``0.000260000000``. Now:

- an amount is fixed notation with three significant digits and no trailing zeros past the cents (``0.000534``,
  ``0.0457``, ``12.35``, ``0``), never an exponent; an unknown amount says so, it is never 0;
- "N× cheaper than X" always means X's $ per request ÷ ours, with N ≥ 1; when ours is the higher price it is
  "N× costlier than X", ours ÷ X's. A ratio below 1 is never printed.

:data:`LEGEND` is the sentence printed under every table that carries such a ratio.
"""

from __future__ import annotations

import math
from decimal import Decimal

LEGEND = (
    "N× cheaper than X = X's $ per request ÷ ours; N× costlier than X = ours ÷ X's (N is never below 1). "
    "Amounts in USD, fixed notation, 3 significant digits."
)

Amount = Decimal | float | int


def usd(value: Amount | None, *, digits: int = 3, unknown: str = "unknown") -> str:
    """``value`` dollars in fixed notation with ``digits`` significant digits: 0.000534, 0.0457, 12.35, 1,234.50.

    At least two decimals (cents) are kept and trailing zeros past them are dropped, so 0.00026 never prints as
    ``0.000260000000``; a value of None (unknown price) prints ``unknown``; zero prints ``0``.
    """
    if value is None:
        return unknown
    x = float(value)
    if not math.isfinite(x):
        return unknown
    if x == 0:
        return "0"
    places = max(2, digits - 1 - math.floor(math.log10(abs(x))))
    text = f"{x:,.{places}f}"
    if places > 2 and "." in text:
        head, _, tail = text.partition(".")
        tail = tail.rstrip("0")
        text = head + "." + (tail if len(tail) >= 2 else tail.ljust(2, "0"))
    return text


def dollars(value: Amount | None, *, digits: int = 3) -> str:
    """:func:`usd` with a dollar sign: ``$0.000534``, ``unknown`` when None."""
    text = usd(value, digits=digits)
    return text if text == "unknown" else ("-$" + text[1:] if text.startswith("-") else "$" + text)


def times(ratio: float) -> str:
    """A ratio ≥ 1 as ``2.30×`` (two decimals below 10, one below 100, none above)."""
    if ratio < 10:
        return f"{ratio:.2f}×"
    if ratio < 100:
        return f"{ratio:.1f}×"
    return f"{ratio:,.0f}×"


def cheaper_ratio(ours: Amount | None, theirs: Amount | None) -> float | None:
    """X's $ per request ÷ ours (> 1: we are cheaper); None when either price is unknown or ours is 0."""
    if ours is None or theirs is None:
        return None
    a, b = float(ours), float(theirs)
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        return None
    return b / a


def versus(ours: Amount | None, theirs: Amount | None, name: str) -> str:
    """ "2.30× cheaper than X", "1.15× costlier than X", "the same price as X", or why no ratio can be given."""
    if theirs is None:
        return f"unknown (no price for {name})"
    if ours is None:
        return "unknown (a price of ours is missing)"
    if float(ours) == 0:
        return f"free, against {dollars(theirs)} for {name}"
    r = cheaper_ratio(ours, theirs)
    if r is None:
        return "unknown"
    if abs(r - 1) < 0.005:
        return f"the same price as {name}"
    if r > 1:
        return f"{times(r)} cheaper than {name}"
    return f"{times(1 / r)} costlier than {name}" if r > 0 else f"costlier than {name} (free)"


def points(delta: float) -> str:
    """An accuracy difference in percentage points, signed: ``+1.0 pt``, ``-3.9 pts``."""
    p = 100 * delta
    return f"{p:+.1f} pt" + ("" if abs(round(p, 1)) == 1 else "s")
