"""`llm-cascade calibrate`, `split` and `eval`: the eval harness on the command line (rich progress bars).

Imported only by :mod:`llm_cascade.cli` when the CLI runs, so typer at module level costs `import llm_cascade` nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: Any) -> None:
    """Add the eval commands to the typer app."""

    @app.command()  # type: ignore[untyped-decorator]
    def calibrate(
        cal_file: Annotated[Path, typer.Argument(help="recorded runs to calibrate on (JSONL or .jsonl.gz)")],
        test: Annotated[Path, typer.Option("--test", help="recorded runs to report on (held out)")],
        json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON here")] = None,
        plot: Annotated[Path | None, typer.Option("--plot", help="write a PNG of the frontier here")] = None,
        markdown: Annotated[Path | None, typer.Option("--markdown", help="write the markdown table here")] = None,
        budget: Annotated[float | None, typer.Option(help="mean $ per request to stay within")] = None,
        min_accuracy: Annotated[float | None, typer.Option(help="accuracy floor (default: best single's)")] = None,
        confidence: Annotated[float, typer.Option(help="bootstrap share the floor must hold in (0 = off)")] = 0.8,
        models: Annotated[str | None, typer.Option(help="comma-separated models to consider (default: all)")] = None,
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
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
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

    @app.command()  # type: ignore[untyped-decorator]
    def split(
        file: Annotated[Path, typer.Argument(help="recorded runs to split")],
        out_a: Annotated[Path, typer.Argument(help="first part (e.g. calibration)")],
        out_b: Annotated[Path, typer.Argument(help="second part (e.g. test)")],
        fraction: Annotated[float, typer.Option(help="share of examples in the first part")] = 0.5,
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
    ) -> None:
        """Split a recorded-run file into two parts, seeded (both written in the recorded-run format)."""
        from .records import load_records, save_records, split_records

        a, b = split_records(load_records(file), fraction, seed)
        save_records(a, out_a)
        save_records(b, out_b)
        print(json.dumps({"first": str(out_a), "n_first": len(a), "second": str(out_b), "n_second": len(b)}))

    register_eval(app)


def register_eval(app: Any) -> None:
    """Add `llm-cascade eval TASK.toml --cascade CASCADE.toml [--replay]`."""

    @app.command("eval")  # type: ignore[untyped-decorator]
    def eval_task(
        task: Annotated[Path, typer.Argument(help="task spec (evals/tasks/<name>.toml)")],
        cascade: Annotated[
            Path | None, typer.Option("--cascade", help="cascade config file (default: the task's `cascade`)")
        ] = None,
        name: Annotated[
            str | None, typer.Option("--name", help="which cascade of the file (default: the task's)")
        ] = None,
        replay: Annotated[
            bool, typer.Option("--replay", help="answer from the task's recorded runs (members 'recorded:<model>')")
        ] = False,
        out: Annotated[Path | None, typer.Option("--out", help="report folder (default: build/eval/<task>)")] = None,
        cache: Annotated[
            Path | None,
            typer.Option("--cache", help="SQLite response cache, live mode (default: <out>/responses.sqlite3)"),
        ] = None,
        no_cache: Annotated[bool, typer.Option("--no-cache", help="call every model even if answered before")] = False,
        limit: Annotated[int | None, typer.Option("--limit", min=1, help="first N examples only")] = None,
        concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="requests in flight")] = 32,
    ) -> None:
        """Run a cascade over a benchmark task, live or replayed from recorded runs; write the md/json/png report."""
        import dataclasses

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ..errors import ConfigError
        from .records import RecordError
        from .runner import cascade_models, run_eval
        from .summary import to_markdown, write_report
        from .tasks import load_examples, load_task

        console = Console(stderr=True)
        try:
            spec = load_task(task)
            if limit is not None:
                spec = dataclasses.replace(spec, limit=limit)
            cascade_file = cascade or spec.cascade
            if cascade_file is None:
                raise ConfigError("--cascade", f"{task.name} names no default cascade: pass --cascade FILE")
            folder = out or Path("build") / "eval" / spec.name
            if spec.format == "zeroeval" and spec.models is None:  # 42 models' generations: import the cascade's only
                spec = dataclasses.replace(spec, models=tuple(cascade_models(cascade_file, spec, name)))
            examples = load_examples(spec)
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console) as bar:
                job = bar.add_task(f"{spec.name} ({'replay' if replay else 'live'})", total=len(examples))
                report = run_eval(
                    spec,
                    examples,
                    cascade_file,
                    name=name,
                    replay=replay,
                    cache=None if no_cache else (cache or folder / "responses.sqlite3"),
                    concurrency=concurrency,
                    on_done=lambda done: bar.update(job, completed=done),
                )
        except (ConfigError, RecordError) as exc:
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        paths = write_report(report, folder)
        print(to_markdown(report))
        console.print("report: " + ", ".join(str(p) for p in paths.values()), soft_wrap=True)
        keys = ("task", "mode", "n", "accuracy", "escalation_rate", "cost_per_request_usd", "calls")
        print(json.dumps({k: report[k] for k in keys}))
