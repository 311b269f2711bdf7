"""Spend reports from the ledger: cost and price per request by model, tier, tag or day, and the saving against
"always the top tier"; as JSON, markdown or a rich table. Also the ``spend`` and ``price`` CLI commands.

The saving needs what the top tier *would* have cost on requests that never reached it. For a request that did
reach it, that is its recorded top-tier cost. For the others it is estimated: each top-tier model priced at the
request's prompt tokens (the largest input count among its calls) and the mean output tokens that model produced in
the selection (the request's own output when the model has no calls there). The report says how many requests were
estimated; an unknown price makes the baseline unknown rather than wrong.

Retries are shown apart: ``retries`` counts the calls that were a retry-layer attempt after the first (``attempt > 1``,
successful or not) and ``retry_cost_usd`` what they cost, i.e. what retrying added on top of one attempt per member.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from ..core.errors import ConfigError
from ..core.types import Usage
from .ledger import Ledger, LedgerRow
from .pricing import PriceTable


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
        }


@dataclass(frozen=True, slots=True)
class Baseline:
    """What sending every request to the top tier would have cost, and the saving of the cascade against it."""

    models: tuple[str, ...]
    cost_usd: Decimal | None
    saving_usd: Decimal | None
    estimated_requests: int

    @property
    def saving_share(self) -> float | None:
        if self.cost_usd is None or self.saving_usd is None or not self.cost_usd:
            return None
        return float(self.saving_usd / self.cost_usd)


@dataclass(frozen=True, slots=True)
class SpendReport:
    by: str
    lines: tuple[SpendLine, ...]
    total: SpendLine
    baseline: Baseline | None
    # Calls made only to observe (shadow sampling, llm_cascade.core.shadow): shown apart, never in the lines or
    # the total, which are the cascade's own cost.
    shadow: SpendLine | None = None

    def to_json(self) -> dict[str, Any]:
        b = self.baseline
        return {
            "by": self.by,
            "lines": [x.to_json() for x in self.lines],
            "total": self.total.to_json(),
            "shadow": None if self.shadow is None else self.shadow.to_json(),
            "always_top_tier": None
            if b is None
            else {
                "models": list(b.models),
                "cost_usd": None if b.cost_usd is None else float(b.cost_usd),
                "saving_usd": None if b.saving_usd is None else float(b.saving_usd),
                "saving_share": b.saving_share,
                "estimated_requests": b.estimated_requests,
            },
        }

    def _cells(self, line: SpendLine) -> list[str]:
        per = line.cost_per_request
        cost = f"{line.cost_usd:.6f}" + (f" (+{line.unpriced} unpriced)" if line.unpriced else "")
        return [
            line.key,
            str(line.requests),
            str(line.calls),
            str(line.errors),
            str(line.tokens_in),
            str(line.tokens_out),
            cost,
            "-" if per is None else f"{per:.8f}",
            str(line.retries) + (f" ({line.retry_cost_usd:.6f} USD)" if line.retry_cost_usd else ""),
        ]

    HEADERS = ("{by}", "requests", "calls", "errors", "tokens in", "tokens out", "cost USD", "USD / request", "retries")

    def _summary(self) -> str:
        shadow = ""
        if self.shadow is not None:
            shadow = (
                f"; shadow calls (observation only, not counted above): {self.shadow.calls} calls on "
                f"{self.shadow.requests} requests, {self.shadow.cost_usd:.6f} USD"
                + (f" (+{self.shadow.unpriced} unpriced)" if self.shadow.unpriced else "")
            )
        return self._baseline_summary() + shadow

    def _baseline_summary(self) -> str:
        b = self.baseline
        if b is None:
            return "always the top tier: no top tier in the selection"
        if b.cost_usd is None or b.saving_usd is None:
            return f"always the top tier ({', '.join(b.models)}): unknown (a price is missing)"
        share = b.saving_share
        return (
            f"always the top tier ({', '.join(b.models)}): {b.cost_usd:.6f} USD"
            f" ({b.estimated_requests} of {self.total.requests} requests estimated); saving {b.saving_usd:.6f} USD"
            + ("" if share is None else f" ({share:.1%})")
        )

    def to_markdown(self) -> str:
        headers = [h.format(by=self.by) for h in self.HEADERS]
        out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(self._cells(x)) + " |" for x in self.lines]
        out.append("| " + " | ".join(f"**{c}**" for c in self._cells(self.total)) + " |")
        return "\n".join(out) + "\n\n" + self._summary() + "\n"

    def _short_cells(self, line: SpendLine) -> list[str]:
        """The terminal table's cells: tokens in/out in one column, money to 3 significant digits, so the table
        fits 80 columns; the full key wraps instead of being cut (two models sharing a prefix stay apart)."""
        per = line.cost_per_request
        cost = usd(line.cost_usd) + (f" +{line.unpriced}?" if line.unpriced else "")
        retries = str(line.retries) + (f" ({usd(line.retry_cost_usd)})" if line.retry_cost_usd else "")
        return [
            line.key,
            f"{line.requests}/{line.calls}",
            str(line.errors),
            f"{_count(line.tokens_in)}/{_count(line.tokens_out)}",
            cost,
            "-" if per is None else usd(per),
            retries,
        ]

    SHORT_HEADERS = ("{by}", "req/calls", "err", "tok in/out", "USD", "USD/req", "retries")

    def to_rich(self) -> Any:
        """A rich Table that fits 80 columns (rich is imported here, not at module import). ``+N?`` after a cost
        counts calls with an unknown price; the JSON and markdown outputs keep every figure in full."""
        from rich.table import Table

        table = Table(title=f"spend by {self.by}", caption=self._summary(), box=None, pad_edge=False)
        for i, h in enumerate(self.SHORT_HEADERS):
            if i == 0:
                table.add_column(h.format(by=self.by), justify="left", overflow="fold", ratio=1, min_width=12)
            else:
                table.add_column(h, justify="right", no_wrap=True)
        for x in self.lines:
            table.add_row(*self._short_cells(x))
        table.add_row(*self._short_cells(self.total), style="bold")
        return table


def usd(value: Decimal) -> str:
    """Dollars to 3 significant digits without an exponent (0.000123, 0.0457, 12.35): small per-request prices
    stay readable in a narrow column."""
    if not value:
        return "0"
    digits = max(2, 2 - value.adjusted())
    return f"{value:.{digits}f}"


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
    if by == "day":
        return lambda r: dt.datetime.fromtimestamp(r.ts, dt.UTC).date().isoformat()
    if by.startswith("tag:") and len(by) > 4:
        tag = by[4:]
        return lambda r: r.tags.get(tag, "-")
    hint = f" (to group by the tag {by!r}: --by tag:{by})" if by and ":" not in by else ""
    raise ConfigError("by", f"must be model, tier, day or tag:NAME, got {by!r}{hint}")


def _line(key: str, rows: Sequence[LedgerRow]) -> SpendLine:
    retried = [r for r in rows if r.attempt > 1]
    return SpendLine(
        key=key,
        requests=len({r.request_id for r in rows}),
        calls=len(rows),
        errors=sum(1 for r in rows if r.outcome != "ok"),
        tokens_in=sum(r.input_tokens for r in rows),
        tokens_out=sum(r.output_tokens for r in rows),
        cost_usd=sum((r.cost_usd for r in rows if r.cost_usd is not None), Decimal(0)),
        unpriced=sum(1 for r in rows if r.cost_usd is None and (r.input_tokens or r.output_tokens)),
        retries=len(retried),
        retry_cost_usd=sum((r.cost_usd for r in retried if r.cost_usd is not None), Decimal(0)),
    )


def always_top_tier(
    rows: Sequence[LedgerRow], prices: PriceTable, top_models: Sequence[str] | None = None
) -> Baseline | None:
    """The cost of sending every request of ``rows`` to the top tier (see the module docstring)."""
    if not rows:
        return None
    if top_models is None:
        top = max(r.tier for r in rows)
        top_models = sorted({r.model for r in rows if r.tier == top})
    requests: dict[str, list[LedgerRow]] = defaultdict(list)
    for r in rows:
        requests[r.request_id].append(r)
    mean_out: dict[str, int] = {}
    for m in top_models:
        outs = [r.output_tokens for r in rows if r.model == m and r.outcome == "ok"]
        if outs:
            mean_out[m] = round(sum(outs) / len(outs))
    total, estimated = Decimal(0), 0
    for calls in requests.values():
        done = {r.model: r for r in calls if r.model in top_models and r.outcome == "ok"}
        if len(done) == len(top_models) and all(r.cost_usd is not None for r in done.values()):
            total += sum((r.cost_usd for r in done.values() if r.cost_usd is not None), Decimal(0))
            continue
        estimated += 1
        prompt = max(r.input_tokens for r in calls)
        own_out = max(r.output_tokens for r in calls)
        for m in top_models:
            cost = prices.cost(m, Usage(prompt, mean_out.get(m, own_out)))
            if cost is None:
                return Baseline(tuple(top_models), None, None, estimated)
            total += cost
    actual = _line("total", rows)
    saving = None if actual.unpriced else total - actual.cost_usd
    return Baseline(tuple(top_models), total, saving, estimated)


def spend_report(
    source: Ledger | Iterable[LedgerRow],
    *,
    by: str = "model",
    since: float | None = None,
    until: float | None = None,
    tags: Mapping[str, str] | None = None,
    prices: PriceTable | None = None,
    top_models: Sequence[str] | None = None,
) -> SpendReport:
    """Spend and price per request grouped ``by`` model, tier, day (UTC) or ``tag:NAME``."""
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
    baseline = always_top_tier(rows, prices or PriceTable.default(), top_models)
    shadow = _line("shadow", observed) if observed else None
    return SpendReport(by, lines, _line("total", rows), baseline, shadow)


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
    """Add ``spend`` and ``price`` to the typer app."""
    import typer

    def command() -> Callable[[Callable[..., None]], Callable[..., None]]:
        return cast(Callable[[Callable[..., None]], Callable[..., None]], app.command())

    @command()
    def spend(
        db: str | None = typer.Option(None, "--db", help="ledger path or database URL (default: the SQLite ledger)"),
        by: str = typer.Option("model", help="model, tier, day or tag:NAME"),
        since: str | None = typer.Option(None, help="ISO date/time (UTC), inclusive"),
        until: str | None = typer.Option(None, help="ISO date/time (UTC), exclusive"),
        tag: list[str] = typer.Option([], help="only requests with this tag, NAME=VALUE (repeatable)"),  # noqa: B008
        fmt: str = typer.Option("table", "--format", help="table, markdown or json"),
        as_json: bool = typer.Option(False, "--json", help="same as --format json"),
        create: bool = typer.Option(False, "--create", help="create the ledger if it does not exist"),
    ) -> None:
        """Spend and price per request from the ledger, and the saving against always using the top tier."""
        from ..core.errors import LLMCascadeError

        tags = dict(t.split("=", 1) for t in tag if "=" in t)
        if len(tags) != len(tag) or fmt not in ("table", "markdown", "json"):
            raise typer.BadParameter("--tag takes NAME=VALUE; --format is table, markdown or json")
        fmt = "json" if as_json else fmt
        try:
            _key_fn(by)  # a bad --by fails before the ledger is opened
            missing = _missing_sqlite_file(db)
            if missing is not None and not create:
                raise ConfigError(
                    "--db", f"no ledger at {missing} (check the path, or pass --create to start an empty one)"
                )
            ledger = Ledger(db)
            try:
                report = spend_report(
                    ledger, by=by, since=_parse_when(since, "since"), until=_parse_when(until, "until"), tags=tags
                )
            finally:
                ledger.close()
        except LLMCascadeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if fmt == "table":
            from rich.console import Console

            Console().print(report.to_rich())
        elif fmt == "markdown":
            print(report.to_markdown())
        else:
            print(json.dumps(report.to_json()))

    @command()
    def price(
        model: str = typer.Argument(..., help="model or backend name, e.g. openai:gpt-4o-mini"),
        tokens_in: int = typer.Option(0, "--tokens-in", min=0, help="input tokens (cached ones included)"),
        tokens_out: int = typer.Option(0, "--tokens-out", min=0, help="output tokens"),
        cached: int = typer.Option(0, "--cached", min=0, help="how many of the input tokens were cache hits"),
    ) -> None:
        """The price of one call; the last line is JSON {"model", "cost_usd"} (null when the price is unknown)."""
        table = PriceTable.default()
        entry = table.lookup(model)
        cost = table.cost(model, Usage(tokens_in, tokens_out, cached))
        if entry is None:
            print(f"{model}: no known price")
        else:
            print(f"{model}: {cost} USD  (in {entry.input}, out {entry.output} USD/1M; {entry.source}, {entry.as_of})")
        print(json.dumps({"model": model, "cost_usd": None if cost is None else float(cost)}))
