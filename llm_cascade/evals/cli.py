"""`llm-cascade calibrate` and `llm-cascade split`: the eval harness on the command line (rich progress bars)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def register(app: Any) -> None:
    """Add the eval commands to the typer app."""
    import typer

    @app.command()
    def calibrate(
        cal_file: Path = typer.Argument(..., help="recorded runs to calibrate on (JSONL, .gz ok; rational files as is)"),
        test: Path = typer.Option(..., "--test", help="recorded runs to report on (held out)"),
        json_out: Path | None = typer.Option(None, "--json", help="write the report as JSON here"),
        plot: Path | None = typer.Option(None, "--plot", help="write a PNG of the cost-accuracy frontier here"),
        markdown: Path | None = typer.Option(None, "--markdown", help="write the markdown table here"),
        budget: float | None = typer.Option(None, help="mean $ per request to stay within (instead of accuracy)"),
        min_accuracy: float | None = typer.Option(None, help="accuracy floor (default: the best single model's)"),
        confidence: float = typer.Option(0.8, help="share of bootstrap resamples the floor must hold in (0 = off)"),
        models: str | None = typer.Option(None, help="comma-separated models to consider (default: all recorded)"),
    ) -> None:
        """Search a cascade on CAL_FILE, report it on --test with 95% CIs against the best single model."""
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from .calibrate import Target
        from .records import RecordError, RunMatrix, load_records
        from .report import evaluate, to_markdown

        console = Console(stderr=True)
        try:
            cal_records = load_records(cal_file)
            test_records = load_records(test)
            cal = RunMatrix.from_records(cal_records)
            test_m = RunMatrix.from_records(test_records, cal.models)
            target = Target(min_accuracy=min_accuracy, budget_usd=budget, confidence=confidence)
            with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task("calibrating", total=1)

                def progress(stage: str, done: int, total: int) -> None:
                    bar.update(task, description=stage, completed=done, total=max(total, 1))

                report = evaluate(
                    cal,
                    test_m,
                    target,
                    models=models.split(",") if models else None,
                    progress=progress,
                    name=f"{cal_file.name} -> {test.name}",
                )
                bar.update(task, description="done", completed=1, total=1)
        except RecordError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        md = to_markdown([report])
        print(md)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        if markdown is not None:
            markdown.write_text(md + "\n", encoding="utf-8")
        if plot is not None:
            from .plot import plot_frontier

            console.print(f"plot: {plot_frontier(report, plot)}")

    @app.command()
    def split(
        file: Path = typer.Argument(..., help="recorded runs to split"),
        out_a: Path = typer.Argument(..., help="first part (e.g. calibration)"),
        out_b: Path = typer.Argument(..., help="second part (e.g. test)"),
        fraction: float = typer.Option(0.5, help="share of examples in the first part"),
        seed: int = typer.Option(0, help="random seed"),
    ) -> None:
        """Split a recorded-run file into two parts, seeded (both written in the recorded-run format)."""
        from .records import load_records, save_records, split_records

        a, b = split_records(load_records(file), fraction, seed)
        save_records(a, out_a)
        save_records(b, out_b)
        print(json.dumps({"first": str(out_a), "n_first": len(a), "second": str(out_b), "n_second": len(b)}))
