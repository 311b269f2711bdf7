"""`llm-cascade compare` on the command line (typer), apart from :mod:`.compare` so the page can be built from
Python without typer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: Any) -> None:
    """Add ``llm-cascade compare`` to the typer app."""

    @app.command()  # type: ignore[untyped-decorator]
    def compare(
        reports: Annotated[
            list[Path] | None, typer.Argument(help="eval / calibrate JSON reports, or folders holding them")
        ] = None,
        ledger: Annotated[str | None, typer.Option("--ledger", help="also a ledger: path or database URL")] = None,
        html_out: Annotated[Path | None, typer.Option("--html", help="write the self-contained HTML page here")] = None,
        markdown: Annotated[Path | None, typer.Option("--markdown", help="write the markdown page here")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="write the figures as JSON here")] = None,
    ) -> None:
        """One page: each task's cascade against each single model ($ per request, accuracy, escalation, saving)."""
        from .compare import from_ledger, load_reports, to_html, to_json, to_markdown

        try:
            comps = load_reports(reports or [])
            if ledger is not None:
                comps += from_ledger(ledger)
        except (OSError, ValueError, KeyError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if not comps:
            typer.echo("error: nothing to compare: give report files or folders, or --ledger", err=True)
            raise typer.Exit(2)
        md = to_markdown(comps)
        print(md)
        for path, text in (
            (html_out, to_html(comps) if html_out else ""),
            (markdown, md + "\n"),
            (json_out, json.dumps(to_json(comps), indent=2) + "\n"),
        ):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                typer.echo(f"wrote {path}", err=True)
