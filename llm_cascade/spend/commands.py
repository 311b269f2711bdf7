"""``llm-cascade spend`` and ``llm-cascade price``: the ledger's spend and the price table on the command line.

``spend`` groups the ledger's calls and shows each cascade's saving against its top tier (``--config`` names the
configured top tiers and the members' own prices); ``--format`` picks a terminal table, markdown, CSV or JSON.
``price`` prices one call of several models at once, with a default token mix when none is given, and ``--list``
shows the table. Both write money as :mod:`.money` says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from ..core.errors import ConfigError
from ..core.types import Usage
from .money import dollars, usd
from .pricing import PriceTable
from .report import _key_fn, _missing_sqlite_file, _parse_when, spend_report

FORMATS = ("table", "markdown", "csv", "json")
# A chat turn with some context and a short answer: what `price` assumes when no token counts are given.
DEFAULT_MIX = (1000, 200)


def register(app: Any) -> None:
    """Add ``spend`` and ``price`` to the typer app."""
    import typer

    def command() -> Callable[[Callable[..., None]], Callable[..., None]]:
        return cast(Callable[[Callable[..., None]], Callable[..., None]], app.command())

    @command()
    def spend(
        db: str | None = typer.Option(None, "--db", help="ledger path or database URL (default: the SQLite ledger)"),
        by: str = typer.Option("model", help="model, tier, cascade, day or tag:NAME"),
        since: str | None = typer.Option(None, help="ISO date/time (UTC), inclusive"),
        until: str | None = typer.Option(None, help="ISO date/time (UTC), exclusive"),
        tag: list[str] = typer.Option([], help="only requests with this tag, NAME=VALUE (repeatable)"),  # noqa: B008
        config: str | None = typer.Option(
            None, "--config", help="the cascades' configuration: their configured top tiers and members' own prices"
        ),
        fmt: str = typer.Option("table", "--format", help="table, markdown, csv or json"),
        as_json: bool = typer.Option(False, "--json", help="same as --format json"),
        create: bool = typer.Option(False, "--create", help="create the ledger if it does not exist"),
    ) -> None:
        """Spend and price per request from the ledger, and each cascade's saving against its top tier."""
        from ..core.errors import LLMCascadeError
        from .ledger import Ledger

        tags = dict(t.split("=", 1) for t in tag if "=" in t)
        if len(tags) != len(tag) or fmt not in FORMATS:
            raise typer.BadParameter(f"--tag takes NAME=VALUE; --format is one of {', '.join(FORMATS)}")
        fmt = "json" if as_json else fmt
        try:
            _key_fn(by)  # a bad --by fails before the ledger is opened
            cascades, own = None, None
            if config is not None:
                from .baseline import from_config

                cascades, own = from_config(config)
            missing = _missing_sqlite_file(db)
            if missing is not None and not create:
                raise ConfigError(
                    "--db", f"no ledger at {missing} (check the path, or pass --create to start an empty one)"
                )
            ledger = Ledger(db)
            try:
                report = spend_report(
                    ledger,
                    by=by,
                    since=_parse_when(since, "since"),
                    until=_parse_when(until, "until"),
                    tags=tags,
                    cascades=cascades,
                    own_prices=own,
                )
            finally:
                ledger.close()
        except LLMCascadeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if fmt == "table":
            from rich.console import Console

            console = Console()
            console.print(report.to_rich(console.width))
        elif fmt == "markdown":
            print(report.to_markdown())
        elif fmt == "csv":
            print(report.to_csv(), end="")
        else:
            print(json.dumps(report.to_json()))

    @command()
    def price(
        models: list[str] = typer.Argument(  # noqa: B008
            None, help="models or backend names, e.g. openai:gpt-4o-mini anthropic:claude-3-haiku-20240307"
        ),
        tokens_in: int | None = typer.Option(None, "--tokens-in", min=0, help="input tokens (cached ones included)"),
        tokens_out: int | None = typer.Option(None, "--tokens-out", min=0, help="output tokens"),
        cached: int = typer.Option(0, "--cached", min=0, help="how many of the input tokens were cache hits"),
        list_all: bool = typer.Option(False, "--list", help="list the price table (filtered by MODELS if given)"),
    ) -> None:
        """The price of one call of each model (default mix: 1,000 tokens in, 200 out) and per 1,000 such calls;
        the last line is JSON (null where the price is unknown)."""
        table = PriceTable.default()
        if list_all:
            names = table.models()
            if models:
                names = [n for n in names if any(m.lower() in n.lower() for m in models)]
            width = max((len(n) for n in names), default=5)
            print(f"{'model':<{width}}  {'in $/1M':>9}  {'out $/1M':>9}  source, as of")
            for n in names:
                e = table.lookup(n)
                if e is not None:
                    print(f"{n:<{width}}  {usd(e.input):>9}  {usd(e.output):>9}  {e.source}, {e.as_of}")
            print(json.dumps({"models": len(names)}))
            return
        if not models:
            raise typer.BadParameter("give one or more models, or --list")
        default = tokens_in is None and tokens_out is None
        usage = Usage(
            DEFAULT_MIX[0] if default else tokens_in or 0, DEFAULT_MIX[1] if default else tokens_out or 0, cached
        )
        mix = f"{usage.input_tokens:,} tokens in, {usage.output_tokens:,} out" + (" (default mix)" if default else "")
        print(f"one call of {mix}:")
        out = []
        width = max(len(m) for m in models)
        for model in models:
            entry = table.lookup(model)
            cost = table.cost(model, usage)
            if entry is None:
                print(f"  {model:<{width}}  no known price (add it to pricing/, with its source)")
            else:
                per_1k = None if cost is None else cost * 1000
                print(
                    f"  {model:<{width}}  {dollars(cost)} per call, {dollars(per_1k)} per 1,000  "
                    f"(in {usd(entry.input)}, out {usd(entry.output)} $/1M; {entry.source}, {entry.as_of})"
                )
            out.append({"model": model, "cost_usd": None if cost is None else float(cost)})
        print(json.dumps(out[0] if len(out) == 1 else out))
