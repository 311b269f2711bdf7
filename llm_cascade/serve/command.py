"""`llm-cascade serve`: the proxy server command (registered by :mod:`llm_cascade.serve.cli`; imports the server
lazily).

The proxy runs on uvloop and httptools when they are installed (the ``server`` extra installs both): the event loop
and the HTTP parser are most of a proxy hop's CPU that is not the cascade's own. Without them it falls back to
asyncio and h11, and says so once at startup.
"""

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, cast


def fast_io() -> tuple[str, str]:
    """(uvicorn ``loop``, uvicorn ``http``): uvloop and httptools where installed, else asyncio and h11."""

    def has(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    loop = "uvloop" if sys.platform != "win32" and has("uvloop") else "asyncio"
    return loop, "httptools" if has("httptools") else "h11"


def register(app: Any) -> None:
    """Add the ``serve`` command to the typer ``app``."""
    import typer

    command = cast(Callable[[Callable[..., None]], Callable[..., None]], app.command())

    @command
    def serve(
        config: Annotated[Path, typer.Option("--config", "-c", help="Configuration file (TOML, or YAML with PyYAML).")],
        host: Annotated[str | None, typer.Option(help="Listen address (default: server.host, 127.0.0.1).")] = None,
        port: Annotated[int | None, typer.Option(help="Listen port (default: server.port, 8000).")] = None,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
        access_log: Annotated[bool, typer.Option(help="Log every request line.")] = False,
        check: Annotated[
            bool, typer.Option(help="Ping each provider at start-up (keys and prices are always checked).")
        ] = True,
    ) -> None:
        """Serve the configured cascades behind an OpenAI-compatible API (/v1/chat/completions)."""
        from ..core.errors import ConfigError
        from .config import load_config
        from .server import serve as run

        loop, http = fast_io()
        if (loop, http) != ("uvloop", "httptools"):
            typer.echo(
                f"note: serving on {loop} + {http}; pip install 'llm-cascade[server]' for uvloop + httptools", err=True
            )
        try:
            cfg = load_config(config)
            run(
                cfg,
                host=host,
                port=port,
                log_level=log_level,
                access_log=access_log,
                loop=loop,
                http=http,
                check=check,
                echo=typer.echo,
                path=config,
            )
        except ConfigError as exc:
            typer.echo(f"configuration error: {exc}", err=True)
            raise typer.Exit(2) from None

    @command
    def check(
        config: Annotated[Path, typer.Option("--config", "-c", help="Configuration file (TOML, or YAML with PyYAML).")],
        reach: Annotated[
            bool, typer.Option(help="Ping each provider (GET /v1/models: checks address and key).")
        ] = True,
        json_out: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
    ) -> None:
        """Check every cascade of a configuration before serving it: API keys, prices, and that providers answer.
        Exit status 1 when there is a problem."""
        import asyncio
        import json
        from dataclasses import asdict

        from ..core.errors import LLMCascadeError
        from .banner import check_all
        from .config import build_components, build_routers, load_config

        try:
            cfg = load_config(config)
            comp = build_components(cfg)
            try:
                reports = asyncio.run(check_all(build_routers(cfg, comp), reach=reach, ping_timeout=10.0))
            finally:
                comp.close()
        except LLMCascadeError as exc:
            typer.echo(f"configuration error: {exc}", err=True)
            raise typer.Exit(2) from None
        if json_out:
            typer.echo(json.dumps({name: [asdict(m) for m in r.members] for name, r in reports.items()}))
        else:
            for name, report in reports.items():
                typer.echo(f"cascade {name!r}: {'ok' if report.ok else 'PROBLEMS'}")
                for line in report.lines():
                    typer.echo(line)
                for p in report.problems:
                    typer.echo(f"  PROBLEM: {p}")
                for w in report.warnings:
                    typer.echo(f"  warning: {w}")
        if any(not r.ok for r in reports.values()):
            raise typer.Exit(1)
