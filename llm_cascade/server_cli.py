"""`llm-cascade serve`: the proxy server command (registered by :mod:`llm_cascade.cli`; imports the server lazily).

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
    ) -> None:
        """Serve the configured cascades behind an OpenAI-compatible API (/v1/chat/completions)."""
        from .config import load_config
        from .errors import ConfigError
        from .server import serve as run

        loop, http = fast_io()
        if (loop, http) != ("uvloop", "httptools"):
            typer.echo(
                f"note: serving on {loop} + {http}; pip install 'llm-cascade[server]' for uvloop + httptools", err=True
            )
        try:
            cfg = load_config(config)
            run(cfg, host=host, port=port, log_level=log_level, access_log=access_log, loop=loop, http=http)
        except ConfigError as exc:
            typer.echo(f"configuration error: {exc}", err=True)
            raise typer.Exit(2) from None
