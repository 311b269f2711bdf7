"""Money: prices, token counts, the ledger and its journal, budgets and shared reservations.

The spend reports that lived in the flat module ``llm_cascade.spend`` are in :mod:`llm_cascade.spend.report`; their
names still resolve here, imported on first use.
"""

from __future__ import annotations

from typing import Any

_REPORT = {"SpendLine", "Baseline", "SpendReport", "usd", "always_top_tier", "spend_report", "register"}


def __getattr__(name: str) -> Any:
    if name in _REPORT:
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module 'llm_cascade.spend' has no attribute {name!r}")
