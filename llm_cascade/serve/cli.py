"""`llm-cascade ...`: a thin command-line layer over the library (typer + rich, the `cli` extra).

Each command imports what it needs inside its body, so `llm-cascade --help` stays fast.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import MissingDependencyError


def _app() -> Any:
    try:
        import typer
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("typer", "cli") from None
    app = typer.Typer(add_completion=False, no_args_is_help=True, help="Agreement-based LLM cascades.")

    @app.command()
    def version() -> None:
        """Print the installed version."""
        from .. import __version__

        print(__version__)

    # Command groups register themselves here, one module each.
    from .command import register as register_serve

    register_serve(app)
    from ..evals.cli import register as register_evals

    register_evals(app)
    from ..evals.compare_cli import register as register_compare

    register_compare(app)
    from ..spend.report import register as register_spend

    register_spend(app)
    return app


def main() -> None:
    """Console-script entry point."""
    _app()()


if __name__ == "__main__":  # pragma: no cover
    main()
