"""The cost-accuracy picture: single models, the cheapest mixes of them, the cascade frontier and the baselines.

The dollar axis is logarithmic (prices span orders of magnitude) with labels in fixed notation ($0.05, not 5E-2),
major ticks only where they fit (1-2-5 within a decade or two, powers of ten beyond), and no minor labels, so labels
never overlap. The y label says what was compared: a held-out TEST file, or a replay of recorded answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import MissingDependencyError
from ..spend.money import dollars


def log_dollar_axis(ax: Any, xs: Sequence[float]) -> None:
    """A readable log-scale x axis for dollar values ``xs``: at least a decade shown, fixed-notation labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    pos = [x for x in xs if x > 0 and math.isfinite(x)]
    if pos:
        lo, hi = min(pos), max(pos)
        span = math.log10(hi / lo)
        pad = 10 ** max(0.15, (1 - span) / 2)  # small spans are widened to one decade so ticks exist
        ax.set_xlim(lo / pad, hi * pad)
        decades = span + 2 * math.log10(pad)
    else:
        decades = 3.0
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: dollars(v, digits=1)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=8)


def compared_label(report: dict[str, Any]) -> str:
    """The accuracy axis of a report: what its figures were measured on."""
    if "n_test" in report:
        return f"accuracy on the held-out TEST file, n={report['n_test']} (%)"
    if report.get("mode") == "replay":
        return f"accuracy, replay of recorded answers, n={report.get('n')} (%)"
    if report.get("mode") == "live":
        return f"accuracy, live run, n={report.get('n')} (%)"
    return "accuracy (%)"


def why_no_plot(report: dict[str, Any]) -> str | None:
    """None when :func:`plot_frontier` can draw ``report``; else the reason, to print where the plot would be."""
    if report["cascade"].get("cost_per_request_usd") is None:
        return "no plot: the cascade's $ per request is unknown (a price is missing), so it has no place on the $ axis"
    if not any(s.get("cost_per_request_usd") is not None for s in report.get("singles", [])):
        return "no plot: no single model with a known price to draw against"
    return None


def plot_frontier(report: dict[str, Any], path: str | Path) -> Path:
    """Write a PNG of one report (measured on its test file); x is $ per 1,000 requests on a log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("matplotlib", "eval") from None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    singles = [s for s in report["singles"] if s["cost_per_request_usd"] is not None]
    xs = [1000 * s["cost_per_request_usd"] for s in singles]
    ys = [100 * s["accuracy"] for s in singles]
    ax.scatter(xs, ys, color="tab:gray", label="single models", zorder=3)
    for s, x, y in zip(singles, xs, ys, strict=True):
        ax.annotate(s["model"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = sorted(
        (1000 * f["cost_per_request_usd"], 100 * f["accuracy"])
        for f in report["frontier"]
        if f["cost_per_request_usd"] is not None
    )
    if front:
        ax.plot(*zip(*front, strict=True), ".", color="tab:blue", alpha=0.4, label="calibration frontier, on test")
    c = report["cascade"]
    if c["cost_per_request_usd"] is not None:
        ax.scatter(
            [1000 * c["cost_per_request_usd"]],
            [100 * c["accuracy"]],
            marker="*",
            s=220,
            color="tab:red",
            label="chosen: best single (no cascade met the target)"
            if report.get("verdict") == "best_single"
            else ("the cascade as configured" if "mode" in report else "chosen cascade"),
            zorder=4,
        )
    base = report["baselines"]
    for key, marker, label in (
        ("confidence_cascade", "s", "confidence cascade"),
        ("oracle_router", "^", "oracle router"),
        ("vote_consistency", "D", "vote consistency"),
    ):
        b = base.get(key, {})
        if b.get("cost_per_request_usd") is not None:
            ax.scatter([1000 * b["cost_per_request_usd"]], [100 * b["accuracy"]], marker=marker, s=60, label=label)
    b = report["best_single"]
    if b is not None:
        ax.axhline(100 * b["accuracy"], color="tab:green", ls="--", lw=1, label=f"best single ({b['model']})")
    every = xs + [x for x, _ in front]
    if c["cost_per_request_usd"] is not None:
        every.append(1000 * c["cost_per_request_usd"])
    log_dollar_axis(ax, every)
    ax.set_xlabel("$ per 1,000 requests (log scale)")
    ax.set_ylabel(compared_label(report))
    ax.set_title(report.get("name") or "cascade vs single models")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
