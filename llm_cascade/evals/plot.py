"""The cost-accuracy picture: single models, the cheapest mixes of them, the cascade frontier and the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import MissingDependencyError


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
            else "chosen cascade",
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
    ax.axhline(100 * b["accuracy"], color="tab:green", ls="--", lw=1, label=f"best single ({b['model']})")
    ax.set_xscale("log")
    ax.set_xlabel("$ per 1,000 requests (log scale)")
    ax.set_ylabel("accuracy on the test split (%)")
    ax.set_title(report.get("name") or "cascade vs single models")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
