"""Spend reports from the ledger: cost and price per request by model, tier, cascade, tag or day, and the saving
of each cascade against sending every request to its top tier (:mod:`.baseline`); as a terminal table, markdown, CSV
or JSON. The ``spend`` and ``price`` commands are in :mod:`.commands`.

Money is written as :mod:`.money` says (fixed notation, 3 significant digits) in the table and markdown; CSV and JSON
keep every figure in full. Retries are shown apart: ``retries`` counts the calls that were a retry-layer attempt after
the first (``attempt > 1``, successful or not) and ``retry_cost_usd`` what they cost.

Requests answered by the response cache (:mod:`llm_cascade.core.cache`) are rows of outcome ``cache_hit`` and cost
0: counted as ``cache_hits`` (not as errors), and ``cache_saved_usd`` sums what their cached answers cost when they
were made (each hit row's ``cache_saved_usd`` tag); ``cache_unpriced`` counts hits whose saving is unknown.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..core.cache import SAVED_TAG
from ..core.errors import ConfigError
from .baseline import Baseline, baselines, top_tier_baseline
from .ledger import Ledger, LedgerRow
from .money import LEGEND, versus
from .money import usd as money_usd
from .pricing import PriceEntry, PriceTable


@dataclass(frozen=True, slots=True)
class SpendLine:
    """One group of the report. ``cost_usd`` sums priced calls; ``unpriced`` counts calls whose price is unknown;
    ``retries`` and ``retry_cost_usd`` are the calls that were a second or later attempt, and their priced cost."""

    key: str
    requests: int
    calls: int
    errors: int
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal
    unpriced: int
    retries: int = 0
    retry_cost_usd: Decimal = Decimal(0)
    cache_hits: int = 0
    cache_saved_usd: Decimal = Decimal(0)
    cache_unpriced: int = 0

    @property
    def cost_per_request(self) -> Decimal | None:
        return self.cost_usd / self.requests if self.requests else None

    def to_json(self) -> dict[str, Any]:
        per = self.cost_per_request
        return {
            "key": self.key,
            "requests": self.requests,
            "calls": self.calls,
            "errors": self.errors,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": float(self.cost_usd),
            "cost_per_request_usd": None if per is None else float(per),
            "unpriced_calls": self.unpriced,
            "retries": self.retries,
            "retry_cost_usd": float(self.retry_cost_usd),
            "cache_hits": self.cache_hits,
            "cache_saved_usd": float(self.cache_saved_usd),
            "cache_unpriced_hits": self.cache_unpriced,
        }


@dataclass(frozen=True, slots=True)
class SpendReport:
    by: str
    lines: tuple[SpendLine, ...]
    total: SpendLine
    baselines: tuple[Baseline, ...] = ()
    # Calls made only to observe (shadow sampling, llm_cascade.core.shadow): shown apart, never in the lines, the
    # total or the baselines, which are the cascade's own cost.
    shadow: SpendLine | None = None

    @property
    def baseline(self) -> Baseline | None:
        """The baseline when the selection holds one cascade (the first one otherwise)."""
        return self.baselines[0] if self.baselines else None

    def to_json(self) -> dict[str, Any]:
        b = self.baseline
        return {
            "by": self.by,
            "lines": [x.to_json() for x in self.lines],
            "total": self.total.to_json(),
            "shadow": None if self.shadow is None else self.shadow.to_json(),
            "always_top_tier": None if b is None else b.to_json(),
            "always_top_tier_per_cascade": [x.to_json() for x in self.baselines],
        }

    HEADERS = ("{by}", "requests", "calls", "errors", "tokens in", "tokens out", "USD", "USD / request", "retries")

    def _cells(self, line: SpendLine) -> list[str]:
        per = line.cost_per_request
        return [
            line.key,
            str(line.requests),
            str(line.calls),
            str(line.errors),
            str(line.tokens_in),
            str(line.tokens_out),
            usd(line.cost_usd) + (f" (+{line.unpriced} unpriced)" if line.unpriced else ""),
            "-" if per is None else usd(per),
            str(line.retries) + (f" ({usd(line.retry_cost_usd)} USD)" if line.retry_cost_usd else ""),
        ]

    BASELINE_HEADERS = ("cascade", "requests", "spent USD", "top tier", "top tier USD", "saving", "vs top tier")

    def _baseline_cells(self, b: Baseline) -> list[str]:
        top = ", ".join(b.models) + ("" if b.configured else " (top tier seen)")
        if b.cost_usd is None or b.saving_usd is None:
            why = "a price is unknown" if b.spent_usd is not None else "a call of ours has no price"
            return [b.cascade, str(b.requests), usd(b.spent_usd), top, "unknown", f"unknown ({why})", "unknown"]
        share = b.saving_share
        return [
            b.cascade,
            str(b.requests),
            usd(b.spent_usd),
            top,
            usd(b.cost_usd),
            usd(b.saving_usd) + ("" if share is None else f" ({share:.1%})"),
            versus(b.spent_usd, b.cost_usd, "the top tier"),
        ]

    def _notes(self) -> list[str]:
        notes = []
        if not self.baselines:
            notes.append("always the top tier: no request in the selection")
        if any(not b.configured for b in self.baselines):
            notes.append(
                "top tier seen: the highest tier in the ledger; pass --config for each cascade's configured one"
            )
        estimated = sum(b.estimated_requests for b in self.baselines)
        if estimated:
            notes.append(
                f"{estimated} of {self.total.requests} requests never reached the top tier: its cost estimated"
            )
        rated = sorted({m for b in self.baselines for m in b.from_recorded_rate})
        if rated:
            notes.append(f"priced at the rate of their recorded calls (not in the price table): {', '.join(rated)}")
        t = self.total
        if t.cache_hits:
            notes.append(
                f"response cache: {t.cache_hits} of {t.requests} requests answered from it at no cost, saving "
                f"{usd(t.cache_saved_usd)} USD" + (f" (+{t.cache_unpriced} hits unpriced)" if t.cache_unpriced else "")
            )
        if self.shadow is not None:
            sh = self.shadow
            notes.append(
                f"shadow calls (observation only, not counted above): {sh.calls} calls on {sh.requests} requests, "
                f"{usd(sh.cost_usd)} USD" + (f" (+{sh.unpriced} unpriced)" if sh.unpriced else "")
            )
        notes.append(LEGEND)
        return notes

    def to_markdown(self) -> str:
        headers = [h.format(by=self.by) for h in self.HEADERS]
        out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(self._cells(x)) + " |" for x in self.lines]
        out.append("| " + " | ".join(f"**{c}**" for c in self._cells(self.total)) + " |")
        out += ["", "Saving against sending every request to the cascade's top tier:", ""]
        out += ["| " + " | ".join(self.BASELINE_HEADERS) + " |", "|" + "---|" * len(self.BASELINE_HEADERS)]
        out += ["| " + " | ".join(self._baseline_cells(b)) + " |" for b in self.baselines]
        out += [""] + [f"*{n}*" for n in self._notes()]
        return "\n".join(out) + "\n"

    def to_csv(self) -> str:
        """One row per group and the total, every figure in full (cost as exact decimals); then the baselines."""
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            [
                self.by,
                "requests",
                "calls",
                "errors",
                "tokens_in",
                "tokens_out",
                "cost_usd",
                "cost_per_request_usd",
                "unpriced_calls",
                "retries",
                "retry_cost_usd",
                "cache_hits",
                "cache_saved_usd",
                "cache_unpriced_hits",
            ]
        )
        for x in (*self.lines, self.total):
            per = x.cost_per_request
            w.writerow(
                [
                    x.key,
                    x.requests,
                    x.calls,
                    x.errors,
                    x.tokens_in,
                    x.tokens_out,
                    f"{x.cost_usd:f}",
                    "" if per is None else f"{per:f}",
                    x.unpriced,
                    x.retries,
                    f"{x.retry_cost_usd:f}",
                    x.cache_hits,
                    f"{x.cache_saved_usd:f}",
                    x.cache_unpriced,
                ]
            )
        w.writerow([])
        w.writerow(
            ["cascade", "requests", "spent_usd", "top_tier", "top_tier_usd", "saving_usd", "top_tier_configured"]
        )
        for b in self.baselines:
            w.writerow(
                [
                    b.cascade,
                    b.requests,
                    "" if b.spent_usd is None else f"{b.spent_usd:f}",
                    " ".join(b.models),
                    "" if b.cost_usd is None else f"{b.cost_usd:f}",
                    "" if b.saving_usd is None else f"{b.saving_usd:f}",
                    b.configured,
                ]
            )
        return buf.getvalue()

    def _short_cells(self, line: SpendLine, keys: Mapping[str, str] | None = None) -> list[str]:
        """The terminal table's cells: tokens in/out in one column, money to 3 significant digits, the key cut in
        its middle as ``keys`` says (never wrapped mid-word; two models sharing a prefix keep their distinct ends)."""
        per = line.cost_per_request
        cost = usd(line.cost_usd) + (f" +{line.unpriced}?" if line.unpriced else "")
        retries = str(line.retries) + (f" ({usd(line.retry_cost_usd)})" if line.retry_cost_usd else "")
        return [
            keys.get(line.key, line.key) if keys is not None else line.key,
            f"{line.requests}/{line.calls}",
            str(line.errors),
            f"{_count(line.tokens_in)}/{_count(line.tokens_out)}",
            cost,
            "-" if per is None else usd(per),
            retries,
        ]

    SHORT_HEADERS = ("{by}", "req/calls", "err", "tok in/out", "USD", "USD/req", "retries")

    def to_rich(self, width: int = 80) -> Any:
        """What fits ``width`` columns (rich is imported here, not at module import): a table of spend per group, its
        key cut in the middle when too long, then one line per cascade with its saving against its top tier (words
        wrap, never mid-word), then the notes. ``+N?`` after a cost counts calls with an unknown price."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        headers = [h.format(by=self.by) for h in self.SHORT_HEADERS]
        full = [self._short_cells(x) for x in (*self.lines, self.total)]
        widths = [max(len(headers[i]), *(len(r[i]) for r in full)) for i in range(1, len(headers))]
        keys = shorten_all([x.key for x in self.lines], max(12, width - sum(widths) - 2 * len(widths)))
        table = Table(title=f"spend by {self.by}", box=None, pad_edge=False, collapse_padding=True)
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True, min_width=None if i else 4)
        for x in self.lines:
            table.add_row(*self._short_cells(x, keys))
        table.add_row(*self._short_cells(self.total), style="bold")
        parts: list[Any] = [table, Text("")]
        for b in self.baselines:
            c = self._baseline_cells(b)
            parts.append(
                Text(f"{c[0]}: {c[1]} requests, spent {c[2]} USD; always {c[3]}: {c[4]} USD; saving {c[5]}; {c[6]}")
            )
        parts.append(Text("\n".join(self._notes()), style="dim"))
        return Group(*parts)


def shorten(text: str, width: int, head: int | None = None) -> str:
    """``text`` in at most ``width`` characters, cut in the middle with an ellipsis: the head and the distinctive end
    both stay (``openai:llama…70b-instruct``), and nothing wraps mid-word."""
    if len(text) <= width:
        return text
    head = max(1, (width - 1) // 3) if head is None else head
    tail = width - 1 - head
    return text[:head] + "…" + text[len(text) - tail :]


def shorten_all(texts: Sequence[str], width: int) -> dict[str, str]:
    """:func:`shorten` for a column: the head is given up, a character at a time, until no two texts read alike."""
    for head in range(max(1, (width - 1) // 3), 0, -1):
        out = {t: shorten(t, width, head) for t in texts}
        if len(set(out.values())) == len(out):
            return out
    long = [t for t in texts if len(t) > width]
    n = 0
    while long and all(len(t) > n and t[n] == long[0][n] for t in long):
        n += 1
    if n:  # the long names differ only in their middle: drop what they share, keep where they differ
        rest = shorten_all([t[n:] for t in long], width - 1)
        return {t: "…" + rest[t[n:]] if len(t) > width else t for t in texts}
    return {t: shorten(t, width) for t in texts}


def usd(value: Decimal | float | None) -> str:
    """Dollars in fixed notation, 3 significant digits (0.000123, 0.0457, 12.35): see :mod:`.money`."""
    return money_usd(value)


def _count(n: int) -> str:
    """A token count in at most 5 characters: 950, 12.3k, 4.5M."""
    if n < 10_000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def _key_fn(by: str) -> Callable[[LedgerRow], str]:
    if by == "model":
        return lambda r: r.model
    if by == "tier":
        return lambda r: str(r.tier)
    if by == "cascade":
        return lambda r: r.tags.get("cascade", "-")
    if by == "day":
        return lambda r: dt.datetime.fromtimestamp(r.ts, dt.UTC).date().isoformat()
    if by.startswith("tag:") and len(by) > 4:
        tag = by[4:]
        return lambda r: r.tags.get(tag, "-")
    hint = f" (to group by the tag {by!r}: --by tag:{by})" if by and ":" not in by else ""
    raise ConfigError("by", f"must be model, tier, cascade, day or tag:NAME, got {by!r}{hint}")


def _saved(rows: Sequence[LedgerRow]) -> tuple[Decimal, int]:
    """What the cache hits among ``rows`` saved, and how many of them have no known saving (no tag, or not a
    number: a row written by hand or by an older version)."""
    saved, unknown = Decimal(0), 0
    for r in rows:
        try:
            value = Decimal(r.tags[SAVED_TAG])
        except (KeyError, ArithmeticError):
            unknown += 1
            continue
        if value.is_finite():
            saved += value
        else:
            unknown += 1
    return saved, unknown


def _line(key: str, rows: Sequence[LedgerRow]) -> SpendLine:
    retried = [r for r in rows if r.attempt > 1]
    hits = [r for r in rows if r.outcome == "cache_hit"]
    saved, unpriced_hits = _saved(hits)
    return SpendLine(
        key=key,
        requests=len({r.request_id for r in rows}),
        calls=len(rows),
        errors=sum(1 for r in rows if r.outcome != "ok" and r.outcome != "cache_hit"),
        tokens_in=sum(r.input_tokens for r in rows),
        tokens_out=sum(r.output_tokens for r in rows),
        cost_usd=sum((r.cost_usd for r in rows if r.cost_usd is not None), Decimal(0)),
        unpriced=sum(1 for r in rows if r.cost_usd is None and (r.input_tokens or r.output_tokens)),
        retries=len(retried),
        retry_cost_usd=sum((r.cost_usd for r in retried if r.cost_usd is not None), Decimal(0)),
        cache_hits=len(hits),
        cache_saved_usd=saved,
        cache_unpriced=unpriced_hits,
    )


def always_top_tier(
    rows: Sequence[LedgerRow], prices: PriceTable, top_models: Sequence[str] | None = None
) -> Baseline | None:
    """The cost of sending every request of ``rows`` to the top tier, all rows as one cascade (see :mod:`.baseline`)."""
    return top_tier_baseline(rows, prices, top_models)


def spend_report(
    source: Ledger | Iterable[LedgerRow],
    *,
    by: str = "model",
    since: float | None = None,
    until: float | None = None,
    tags: Mapping[str, str] | None = None,
    prices: PriceTable | None = None,
    top_models: Sequence[str] | None = None,
    cascades: Mapping[str, Sequence[Sequence[str]]] | None = None,
    own_prices: Mapping[str, PriceEntry] | None = None,
) -> SpendReport:
    """Spend and price per request grouped ``by`` model, tier, cascade, day (UTC) or ``tag:NAME``; the saving of each
    cascade against its top tier (``cascades``: name → member names per tier, e.g. from :func:`.baseline.from_config`;
    ``top_models``: one top tier for all rows instead)."""
    key = _key_fn(by)
    if isinstance(source, Ledger):
        rows = source.rows(since=since, until=until, tags=tags)
    else:
        rows = [r for r in source if (since is None or r.ts >= since) and (until is None or r.ts < until)]
        rows = [r for r in rows if all(r.tags.get(k) == v for k, v in (tags or {}).items())]
    observed = [r for r in rows if r.tags.get("shadow") == "1"]
    if observed:
        rows = [r for r in rows if r.tags.get("shadow") != "1"]
    groups: dict[str, list[LedgerRow]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    lines = tuple(_line(k, groups[k]) for k in sorted(groups))
    table = prices or PriceTable.default()
    if top_models is not None:
        one = top_tier_baseline(rows, table, top_models, own_prices=own_prices)
        found: tuple[Baseline, ...] = () if one is None else (one,)
    else:
        found = baselines(rows, table, cascades, own_prices=own_prices)
    return SpendReport(by, lines, _line("total", rows), found, _line("shadow", observed) if observed else None)


def _parse_when(value: str | None, field: str) -> float | None:
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(field, f"expected an ISO date or time such as 2026-01-31, got {value!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _missing_sqlite_file(db: str | None) -> Path | None:
    """The SQLite file ``db`` names (the default ledger when None) if it does not exist; None when it exists or
    ``db`` is a server database URL (whose existence only a connection can tell)."""
    from .ledger import default_path

    if db is None:
        path = default_path()
    elif db.startswith("sqlite:///"):
        path = Path(db.removeprefix("sqlite:///"))
    elif "://" in db or db == ":memory:":
        return None
    else:
        path = Path(db)
    path = path.expanduser()
    return None if path.exists() else path


def register(app: Any) -> None:
    """Add ``spend`` and ``price`` to the typer app (kept here for the old import path; see :mod:`.commands`)."""
    from .commands import register as register_commands

    register_commands(app)
