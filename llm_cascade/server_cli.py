"""`llm-cascade serve`: the proxy server command (registered by :mod:`llm_cascade.cli`; imports the server lazily)."""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, cast


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

        try:
            cfg = load_config(config)
            run(cfg, host=host, port=port, log_level=log_level, access_log=access_log)
        except ConfigError as exc:
            typer.echo(f"configuration error: {exc}", err=True)
            raise typer.Exit(2) from None
