"""`llm-cascade compare`: eval and calibrate reports (and a ledger) side by side, on one page.

Each of ``eval``, ``calibrate`` and ``spend`` writes its own report; this module reads them back and puts, per task,
the cascade and every single model in one table: $ per request, accuracy with its 95% interval, escalation rate, and
the cascade's saving against each model in the one convention of :mod:`llm_cascade.spend.money`. A Pareto plot
(log-dollar axis) sits beside each table. The page is markdown or one self-contained HTML file: CSS inline and the
plot as inline SVG, so it opens offline and can be mailed as it is.

Every figure is read from the reports, never recomputed, except the intervals of the single models (which the
reports give as point accuracies): a Wilson 95% interval over the report's ``n``. A ledger holds no gold answers,
so its rows give price and escalation only, and say so.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..spend.money import LEGEND, cheaper_ratio, dollars, points, versus


@dataclass(frozen=True, slots=True)
class Point:
    """One configuration on one task: the cascade or a single model."""

    label: str
    accuracy: float | None
    accuracy_ci: tuple[float, float] | None
    cost_per_request: float | None
    escalation_rate: float | None = None


@dataclass(frozen=True, slots=True)
class TaskComparison:
    """A task's cascade against each single model, and what was compared (a replay, a held-out half, a ledger)."""

    task: str
    source: str
    compared: str
    n: int
    cascade: Point
    singles: tuple[Point, ...]
    notes: tuple[str, ...] = field(default=())

    def saving(self, single: Point) -> str:
        return versus(self.cascade.cost_per_request, single.cost_per_request, single.label)

    def verdict(self) -> str:
        """One plain sentence: does the cascade save against its own models here, and if not, why not."""
        c = self.cascade
        if c.label.startswith("chosen: "):
            return (
                f"NO SAVING: calibration chose a single model, {c.label.removeprefix('chosen: ')}: no cascade beat the "
                "best single model on its held-out folds (the reason is in the note)"
            )
        if c.cost_per_request is None:
            unpriced = [p.label for p in self.singles if p.cost_per_request is None]
            return (
                "NO SAVING CAN BE STATED: the cascade's $ per request is unknown (a price is missing, and it is "
                "never counted as 0)" + (f"; no price for {', '.join(unpriced)}" if unpriced else "")
            )
        scored = [s for s in self.singles if s.accuracy is not None and s.cost_per_request is not None]
        if c.accuracy is None or not scored:
            cheaper = [s for s in self.singles if (cheaper_ratio(c.cost_per_request, s.cost_per_request) or 0) > 1]
            return (
                f"no accuracy measured here; the cascade is cheaper than {len(cheaper)} of "
                f"{len(self.singles)} models sent every request"
            )
        best = max(scored, key=lambda s: (s.accuracy or 0.0, -(s.cost_per_request or 0.0)))
        dominating = [
            s
            for s in scored
            if (s.accuracy or 0.0) >= c.accuracy - 1e-12 and (s.cost_per_request or 0.0) <= c.cost_per_request
        ]
        if dominating:
            d = min(dominating, key=lambda s: s.cost_per_request or 0.0)
            return (
                f"NO SAVING: {d.label} alone is at least as accurate ({_pct(d.accuracy)} vs {_pct(c.accuracy)}) and "
                f"{versus(d.cost_per_request, c.cost_per_request, 'the cascade')}; a cascade cannot beat a model "
                "that is both, so use it (or calibrate a cascade on these data: `llm-cascade calibrate`)"
            )
        gap = (best.accuracy or 0.0) - c.accuracy
        if gap > 1e-12:
            return (
                f"TRADE-OFF, not a saving at equal accuracy: {best.label} is {points(gap)} more accurate and "
                f"the cascade is {self.saving(best)}"
            )
        if (best.cost_per_request or 0.0) < c.cost_per_request:
            return (
                f"TRADE-OFF: more accurate than every model ({points(-gap)} over "
                f"{best.label}) but {self.saving(best)}: accuracy bought, not a saving"
            )
        return (
            f"SAVING: at least as accurate as every model ({_pct(c.accuracy)}; best single {best.label} "
            f"{_pct(best.accuracy)}) and {self.saving(best)}"
        )


def wilson(acc: float, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson 95% interval of a share ``acc`` of ``n`` (what a single model's point accuracy supports)."""
    if n <= 0:
        return None
    denom = 1 + z * z / n
    centre = (acc + z * z / (2 * n)) / denom
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _ci(value: Any) -> tuple[float, float] | None:
    if not value or len(value) != 2 or any(v is None or not math.isfinite(v) for v in value):
        return None
    return (float(value[0]), float(value[1]))


def _singles(items: Iterable[dict[str, Any]], n: int) -> tuple[Point, ...]:
    return tuple(
        Point(s["model"], s["accuracy"], wilson(s["accuracy"], n), s["cost_per_request_usd"])
        for s in items
        if s.get("accuracy") is not None
    )


def from_eval(report: dict[str, Any], source: str) -> TaskComparison:
    """An ``llm-cascade eval`` report (``eval_report.json``)."""
    mode = report.get("mode", "")
    compared = (
        f"replay of the recorded answers of {report['n']} questions (the cascade and each model alone on the same ones)"
        if mode == "replay"
        else f"live run over {report['n']} questions; single models from the recorded runs of the same questions"
    )
    n = report.get("n_scored") or report["n"]
    cascade = Point(
        "cascade",
        report.get("accuracy"),
        _ci(report.get("accuracy_ci")),
        report.get("cost_per_request_usd"),
        report.get("escalation_rate"),
    )
    return TaskComparison(
        report.get("task") or report["name"],
        source,
        compared,
        report["n"],
        cascade,
        _singles(report.get("singles", []), n),
        tuple(report.get("flags", [])),
    )


def from_calibrate(report: dict[str, Any], source: str) -> TaskComparison:
    """An ``llm-cascade calibrate`` report: the chosen configuration, measured on the held-out TEST file."""
    c = report["cascade"]
    reach = c.get("reach_rate_per_tier") or [1.0]
    n = report["n_test"]
    label = "cascade" if report.get("verdict") == "cascade" else f"chosen: {c.get('description', 'best single')}"
    cascade = Point(
        label, c["accuracy"], _ci(c.get("accuracy_ci")), c["cost_per_request_usd"], reach[1] if len(reach) > 1 else 0.0
    )
    compared = (
        f"held out: chosen on {report['n_calibration']} calibration examples, measured on {n} TEST examples "
        "it never saw"
    )
    return TaskComparison(
        report["name"], source, compared, n, cascade, _singles(report["singles"], n), tuple(report.get("flags", []))
    )


def from_audit(report: dict[str, Any], source: str) -> TaskComparison:
    """An ``llm-cascade audit --from-ledger`` report: served traffic, accuracy read as fidelity to the reference."""
    total, ref = report["total"], report["reference"]
    cascade = Point(
        "cascade (served)", total["fidelity"], _ci(total.get("fidelity_ci95")), total["cost_per_request_usd"], None
    )
    reference = Point(ref, 1.0, None, total["reference_cost_per_request_usd"])
    compared = (
        f"{total['requests']} served requests from the ledger; accuracy is fidelity to {ref} "
        f"({report['fidelity_means']})"
    )
    return TaskComparison(f"traffic, audited against {ref}", source, compared, total["requests"], cascade, (reference,))


def load_reports(paths: Sequence[str | Path]) -> list[TaskComparison]:
    """Read eval / calibrate / audit JSON reports; a folder is searched for ``*report.json`` files (an eval folder's
    ``report.json`` and ``eval_report.json`` are the same report, read once)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*report.json"))
            files += [f for f in found if not (f.name == "eval_report.json" and (f.parent / "report.json").exists())]
        else:
            files.append(p)
    out: list[TaskComparison] = []
    for f in files:
        data = json.loads(f.read_text(encoding="utf-8"))
        for report in data if isinstance(data, list) else [data]:
            if "n_test" in report and "cascade" in report:
                out.append(from_calibrate(report, str(f)))
            elif "fidelity_means" in report and "total" in report:
                out.append(from_audit(report, str(f)))
            elif "escalation_rate" in report and "singles" in report:
                out.append(from_eval(report, str(f)))
            else:
                raise ValueError(f"{f}: not an `eval`, `calibrate` or `audit` report")
    return out


def from_ledger(db: str | None, *, prices: Any = None) -> list[TaskComparison]:
    """Each cascade of a ledger (its ``cascade`` tag, else one group): $ per request, escalation rate, and what each
    of its models would have cost sent every request (priced as ``spend``'s baseline is: recorded calls first)."""
    from ..spend.ledger import Ledger
    from ..spend.pricing import PriceTable
    from ..spend.report import always_top_tier

    ledger = Ledger(db)
    try:
        rows = ledger.rows()
    finally:
        ledger.close()
    table = prices or PriceTable.default()
    groups: dict[str, list[Any]] = {}
    for r in rows:
        if r.tags.get("shadow") == "1":  # observation calls (shadow sampling) are not the cascade's cost
            continue
        groups.setdefault(r.tags.get("cascade", "all requests"), []).append(r)
    out = []
    for name, grp in sorted(groups.items()):
        requests: dict[str, list[Any]] = {}
        for r in grp:
            requests.setdefault(r.request_id, []).append(r)
        n = len(requests)
        unpriced = any(r.cost_usd is None and (r.input_tokens or r.output_tokens) for r in grp)
        cost = None if unpriced else float(sum(r.cost_usd for r in grp if r.cost_usd is not None)) / n
        escalated = sum(max(r.tier for r in calls) > 0 for calls in requests.values()) / n
        singles = []
        for m in sorted({r.model for r in grp}):
            b = always_top_tier(grp, table, [m])
            alone = None if b is None or b.cost_usd is None else float(b.cost_usd) / n
            singles.append(Point(m, None, None, alone))
        out.append(
            TaskComparison(
                name,
                str(db or "the default ledger"),
                f"{n} recorded requests; each model priced as if sent every one (no accuracy: a ledger has no gold)",
                n,
                Point("cascade", None, None, cost, escalated),
                tuple(singles),
            )
        )
    return out


# --- rendering -------------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _acc(p: Point) -> str:
    if p.accuracy is None:
        return "not measured"
    return _pct(p.accuracy) + ("" if p.accuracy_ci is None else f" ({_pct(p.accuracy_ci[0])}–{_pct(p.accuracy_ci[1])})")


def _per_1k(x: float | None) -> str:
    return dollars(None if x is None else 1000 * x)


HEADERS = ("configuration", "$ per request", "$ per 1k requests", "accuracy (95% CI)", "escalation", "the cascade is")


def rows(t: TaskComparison) -> list[tuple[str, ...]]:
    """The table of one task: the cascade first, then each single model."""
    c = t.cascade
    out: list[tuple[str, ...]] = [
        (c.label, dollars(c.cost_per_request), _per_1k(c.cost_per_request), _acc(c), _pct(c.escalation_rate), "—")
    ]
    for s in t.singles:
        out.append(
            (f"{s.label} alone", dollars(s.cost_per_request), _per_1k(s.cost_per_request), _acc(s), "—", t.saving(s))
        )
    return out


def overview(comparisons: Sequence[TaskComparison]) -> list[tuple[str, str]]:
    """(task, verdict) for the page's first table: where the data hold a saving and where they do not, at a glance."""
    return [(t.task, t.verdict()) for t in comparisons]


def to_markdown(comparisons: Sequence[TaskComparison]) -> str:
    """The page as markdown: the verdicts at a glance, then one section per task: a table, the verdict, the legend."""
    lines = ["# Price per request: cascades against single models", "", "| task | verdict |", "|---|---|"]
    lines += [f"| {task} | {verdict} |" for task, verdict in overview(comparisons)]
    lines.append("")
    for t in comparisons:
        lines += [f"## {t.task}", "", f"*Compared:* {t.compared}. *Source:* `{t.source}`.", ""]
        lines += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(r) + " |" for r in rows(t)]
        lines += ["", f"**{t.verdict()}**", ""]
        lines += [f"- note: {n}" for n in t.notes]
        lines += ["", f"*{LEGEND}*", ""]
    return "\n".join(lines)


def pareto_svg(t: TaskComparison) -> tuple[str | None, str]:
    """An inline SVG of accuracy against $ per 1k requests (log axis), the Pareto front drawn through the points no
    other beats on both; or None and the reason when it cannot be drawn (unknown prices, no accuracy)."""
    pts = [p for p in (t.cascade, *t.singles) if p.cost_per_request is not None and p.accuracy is not None]
    missing = [p.label for p in (t.cascade, *t.singles) if p.cost_per_request is None]
    if t.cascade not in pts:
        why = "its price is unknown" if t.cascade.cost_per_request is None else "its accuracy was not measured"
        return None, f"no plot: the cascade cannot be placed ({why})"
    if len(pts) < 2:
        return None, "no plot: no single model with both a price and an accuracy to draw against"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        return None, "no plot: matplotlib is not installed (pip install 'llm-cascade[eval]')"
    from .plot import log_dollar_axis

    # text stays text (a tenth of the size of glyph paths, and searchable); no metadata block, no date: the page
    # is the same bytes for the same reports
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "llm-cascade"})
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [1000 * (p.cost_per_request or 0.0) for p in pts]
    ys = [100 * (p.accuracy or 0.0) for p in pts]
    front = sorted(
        (x, y)
        for x, y in zip(xs, ys, strict=True)
        if not any(x2 <= x and y2 > y for x2, y2 in zip(xs, ys, strict=True))
    )
    ax.step(*zip(*front, strict=True), where="post", color="tab:blue", alpha=0.5, lw=1, label="Pareto front")
    for p, x, y in zip(pts, xs, ys, strict=True):
        is_c = p is t.cascade
        ax.scatter(
            [x],
            [y],
            marker="*" if is_c else "o",
            s=200 if is_c else 40,
            color="tab:red" if is_c else "tab:gray",
            zorder=3,
        )
        ax.annotate(p.label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    log_dollar_axis(ax, xs)
    ax.set_xlabel("$ per 1,000 requests (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{t.task}: {t.compared.split(':')[0].split('(')[0].strip()}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    note = f"not drawn (unknown price): {', '.join(missing)}" if missing else ""
    return svg, note


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;
color:#222}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}.overview td,.overview th{text-align:left}
tr.cascade{font-weight:600;background:#fff6e6}
.verdict{font-weight:600}.legend,.note,.compared{color:#555;font-size:.9em}.plot svg{max-width:100%;height:auto}
"""


def to_html(comparisons: Sequence[TaskComparison]) -> str:
    """The page as one self-contained HTML file: no script, no external link, the plots inline."""

    def e(text: str) -> str:  # escaped, with `code` spans as <code>
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))

    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>llm-cascade: price per request</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Price per request: cascades against single models</h1>",
        "<table class='overview'><thead><tr><th>task</th><th>verdict</th></tr></thead><tbody>",
        *(f"<tr><td>{e(task)}</td><td>{e(v)}</td></tr>" for task, v in overview(comparisons)),
        "</tbody></table>",
    ]
    for t in comparisons:
        parts.append(f"<section class='task' data-task='{e(t.task)}'><h2>{e(t.task)}</h2>")
        parts.append(f"<p class='compared'>Compared: {e(t.compared)}. Source: <code>{e(t.source)}</code>.</p>")
        parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in HEADERS) + "</tr></thead><tbody>")
        for i, r in enumerate(rows(t)):
            label = t.cascade.label if i == 0 else t.singles[i - 1].label
            cls = "cascade" if i == 0 else "single"
            cells = "".join(
                f"<td class='{k}'>{e(v)}</td>"
                for k, v in zip(
                    ("config", "usd-per-request", "usd-per-1k", "accuracy", "escalation", "saving"), r, strict=True
                )
            )
            parts.append(f"<tr class='{cls}' data-config='{e(label)}'>{cells}</tr>")
        parts.append("</tbody></table>")
        parts.append(f"<p class='verdict'>{e(t.verdict())}</p>")
        parts += [f"<p class='note'>Note: {e(n)}</p>" for n in t.notes]
        parts.append(f"<p class='legend'>{e(LEGEND)}</p>")
        svg, note = pareto_svg(t)
        if svg is not None:
            parts.append(f"<div class='plot'>{svg}</div>")
        if note:
            parts.append(f"<p class='note'>{e(note)}</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def to_json(comparisons: Sequence[TaskComparison]) -> list[dict[str, Any]]:
    """The same figures as data (what the page shows, before formatting)."""

    def point(p: Point) -> dict[str, Any]:
        return {
            "label": p.label,
            "accuracy": p.accuracy,
            "accuracy_ci": None if p.accuracy_ci is None else list(p.accuracy_ci),
            "cost_per_request_usd": p.cost_per_request,
            "escalation_rate": p.escalation_rate,
        }

    return [
        {
            "task": t.task,
            "source": t.source,
            "compared": t.compared,
            "n": t.n,
            "cascade": point(t.cascade),
            "singles": [
                {**point(s), "cheaper_ratio": cheaper_ratio(t.cascade.cost_per_request, s.cost_per_request)}
                for s in t.singles
            ],
            "verdict": t.verdict(),
            "notes": list(t.notes),
        }
        for t in comparisons
    ]
