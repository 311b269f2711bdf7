"""`llm-cascade calibrate`, `split` and `eval`: the eval harness on the command line (rich progress bars).

Imported only by :mod:`llm_cascade.serve.cli` when the CLI runs, so typer at module level costs `import llm_cascade`
nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: Any) -> None:
    """Add the eval commands to the typer app."""

    @app.command()  # type: ignore[untyped-decorator]
    def calibrate(
        cal_file: Annotated[
            Path | None, typer.Argument(help="recorded runs to calibrate on (JSONL, .jsonl.gz or Parquet)")
        ] = None,
        test: Annotated[
            Path | None, typer.Option("--test", help="recorded runs to report on (held out; JSONL or Parquet)")
        ] = None,
        from_ledger: Annotated[
            str | None,
            typer.Option("--from-ledger", help="calibrate on the shadowed requests observed in this ledger (URL/path)"),
        ] = None,
        reference: Annotated[
            str | None,
            typer.Option(
                help="with --from-ledger: the model whose answers count as correct where no gold is known "
                "(default: the one the ledger records)"
            ),
        ] = None,
        since: Annotated[
            str | None, typer.Option(help="with --from-ledger: only requests from this ISO date/time on")
        ] = None,
        gold: Annotated[
            Path | None,
            typer.Option(help="with --from-ledger: JSONL labels {gold, request_id | example} joined to the requests"),
        ] = None,
        suggest_labels: Annotated[
            int | None,
            typer.Option(
                "--suggest-labels", min=1, help="with --from-ledger: list the N requests whose labels matter most"
            ),
        ] = None,
        out: Annotated[Path | None, typer.Option("--out", help="where --suggest-labels writes (JSONL)")] = None,
        judge: Annotated[
            str | None,
            typer.Option(
                help="with --from-ledger: a stronger model labels the requests --suggest-labels would list (default "
                "200); its calls are priced and recorded in the ledger, tagged judge"
            ),
        ] = None,
        judge_config: Annotated[
            Path | None,
            typer.Option("--judge-config", help="a serve config defining the judge's provider and price"),
        ] = None,
        judge_check: Annotated[
            int,
            typer.Option(
                "--judge-check", min=0, help="gold-labelled requests the judge also answers, to report its agreement"
            ),
        ] = 50,
        shadow_rate: Annotated[
            float, typer.Option(help="with --from-ledger --emit: the [shadow] rate of the emitted config (0: none)")
        ] = 0.05,
        json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON here")] = None,
        plot: Annotated[Path | None, typer.Option("--plot", help="write a PNG of the frontier here")] = None,
        markdown: Annotated[Path | None, typer.Option("--markdown", help="write the markdown table here")] = None,
        budget: Annotated[float | None, typer.Option(help="mean $ per request to stay within")] = None,
        min_accuracy: Annotated[float | None, typer.Option(help="accuracy floor (default: best single's)")] = None,
        guard_share: Annotated[
            float,
            typer.Option(
                "--guard-share",
                "--confidence",
                help="share of bootstrap resamples of the fold-held-out outcomes in which the accuracy condition "
                "must hold (0 = off; --confidence is the former name)",
            ),
        ] = 0.8,
        margin: Annotated[
            float, typer.Option(help="accuracy the cascade may lose to the best single (0.01 = 1 pt)")
        ] = 0.0,
        folds: Annotated[int, typer.Option(help="cross-validation folds of the calibration file")] = 5,
        rivals: Annotated[
            str,
            typer.Option(
                help="'all': match the most accurate single model of each fold and resample; "
                "'best': only the calibration file's best"
            ),
        ] = "all",
        contender_share: Annotated[
            float,
            typer.Option(
                help="a model most accurate in this share of resamples is a contender the cascade must undercut on cost"
            ),
        ] = 0.1,
        min_saving: Annotated[
            float, typer.Option(help="the cascade must be this much cheaper in every fold (0.1 = 10%)")
        ] = 0.1,
        models: Annotated[str | None, typer.Option(help="comma-separated models to consider (default: all)")] = None,
        emit: Annotated[
            Path | None, typer.Option("--emit", help="write the chosen cascade as a config file for serve --config")
        ] = None,
        emit_name: Annotated[str, typer.Option(help="the cascade's name in the emitted config")] = "calibrated",
        emit_provider: Annotated[
            str, typer.Option(help="provider prefix of the emitted members ('<provider>:<model>')")
        ] = "recorded",
        normalizer: Annotated[
            str | None,
            typer.Option(
                help="the emitted cascade's normalizer (e.g. choice, choice:J, number; checked first); default: "
                "exact, or with --from-ledger choice when every observed answer is a letter"
            ),
        ] = None,
        max_memory: Annotated[
            float | None,
            typer.Option(
                "--max-memory",
                help="GiB the search may use: above it the search is narrowed (smaller groups, said in the report) "
                "rather than failing",
            ),
        ] = None,
        screen_rows: Annotated[
            int | None,
            typer.Option(
                "--screen-rows",
                help="above 200,000 calibration rows, screen candidates on a seeded sample of this many rows and "
                "score the finalists on every row (default 10,000; 0 scores every candidate on every row)",
            ),
        ] = None,
    ) -> None:
        """Search a cascade on CAL_FILE, report it on --test with 95% CIs against the best single model; or, with
        --from-ledger, on the traffic's shadowed requests (accuracy = fidelity to --reference unless --gold)."""
        import numpy as np
        from rich.console import Console

        from ..core.errors import ConfigError, MissingDependencyError
        from .calibrate import Target
        from .calibrate import calibrate as calibrate_runs
        from .columnar import file_prices, load_matrix
        from .emit import checked, normalizer_spec, prices_toml
        from .records import RecordError
        from .report import check_test_models, evaluate, to_markdown

        console = Console(stderr=True)
        if from_ledger is not None:
            _from_ledger(
                console,
                from_ledger,
                reference,
                since,
                gold,
                suggest_labels,
                out,
                models,
                normalizer,
                emit,
                emit_name,
                shadow_rate,
                json_out,
                dict(
                    min_accuracy=min_accuracy,
                    budget_usd=budget,
                    guard_share=guard_share,
                    margin=margin,
                    folds=folds,
                    rivals=rivals,
                    contender_share=contender_share,
                    min_saving=min_saving,
                ),
                judge=judge,
                judge_config=judge_config,
                judge_check=judge_check,
                max_memory=max_memory,
            )
            return
        try:
            if cal_file is None or test is None:
                raise ConfigError("calibrate", "give CAL_FILE and --test FILE, or --from-ledger URL --reference MODEL")
            spec = normalizer_spec(normalizer or "exact")  # a typo fails now, not after the search
            target = Target(
                min_accuracy=min_accuracy,
                budget_usd=budget,
                guard_share=guard_share,
                margin=margin,
                folds=folds,
                rivals=rivals,  # type: ignore[arg-type]  # validated by Target, naming the field
                contender_share=contender_share,
                min_saving=min_saving,
            )
            with _phases(console) as progress:
                cal = load_matrix(cal_file, progress=progress)  # JSONL or Parquet, told by the content
                test_m = load_matrix(test, cal.models, progress=progress)
                names = models.split(",") if models else None
                check_test_models(cal, test_m, names or cal.models)
                limit = None if max_memory is None else int(max_memory * 2**30)
                screen: dict[str, Any] = {} if screen_rows is None else {"screen_rows": screen_rows}
                chosen = calibrate_runs(cal, target, models=names, progress=progress, max_memory=limit, **screen)
                report = evaluate(
                    cal,
                    test_m,
                    target,
                    models=names,
                    progress=progress,
                    name=f"{cal_file.name} -> {test.name}",
                    calibration=chosen,
                )
        except (RecordError, ConfigError, MissingDependencyError) as exc:
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        if emit is not None:
            header = (
                f"Calibrated by `llm-cascade calibrate {cal_file.name} --test {test.name}`: verdict {report['verdict']}"
                f"\n{chosen.config.describe()}"
            )
            if emit_provider != "recorded":
                header += (
                    f"\nMembers are '{emit_provider}:<model>': add a [providers.{emit_provider}] section if needed."
                )
            golds = [cal.vocab[g] for g in np.unique(cal.gold).tolist() if g >= 0]
            spec = normalizer_spec(normalizer or "exact", golds)
            used = [m for t in chosen.config.tiers for m in t.models]
            try:
                fitted = file_prices(cal_file, used)
            except RecordError as exc:
                console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
                raise typer.Exit(2) from None
            prices = {f"{emit_provider}:{m}": p for m, p in fitted.items()}
            text = chosen.config.to_toml(emit_name, provider=emit_provider, normalizer=spec, header=header)
            emit.parent.mkdir(parents=True, exist_ok=True)
            emit.write_text(checked(text + "\n\n" + prices_toml(prices)), encoding="utf-8")
            report["emitted"] = str(emit)
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
        """Split a recorded-run file into two parts, seeded (each written as Parquet when its name ends in .parquet,
        else as JSONL)."""
        from rich.console import Console

        from ..core.errors import MissingDependencyError
        from .columnar import split_file
        from .records import RecordError

        try:
            a, b = split_file(file, out_a, out_b, fraction, seed)
        except (RecordError, MissingDependencyError) as exc:
            Console(stderr=True).print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        print(json.dumps({"first": str(out_a), "n_first": a, "second": str(out_b), "n_second": b}))

    @app.command()  # type: ignore[untyped-decorator]
    def convert(
        source: Annotated[Path, typer.Argument(help="recorded runs (JSONL, .jsonl.gz or Parquet)")],
        dest: Annotated[Path, typer.Argument(help="where to write them: Parquet for a .parquet name, else JSONL")],
    ) -> None:
        """Convert recorded runs between JSONL and Parquet, a batch at a time (Parquet calibrates a million rows
        without parsing JSON); the last line is JSON."""
        from rich.console import Console

        from ..core.errors import MissingDependencyError
        from .columnar import convert as convert_runs
        from .columnar import runs_format
        from .records import RecordError

        try:
            n = convert_runs(source, dest)
        except (RecordError, MissingDependencyError) as exc:
            Console(stderr=True).print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        print(json.dumps({"source": str(source), "dest": str(dest), "records": n, "format": runs_format(dest)}))

    register_eval(app)

    @app.command()  # type: ignore[untyped-decorator]
    def audit(
        from_ledger: Annotated[str, typer.Option("--from-ledger", help="the ledger (path or database URL)")],
        reference: Annotated[
            str | None,
            typer.Option(help="the model the cascade must stay faithful to (default: the one the ledger records)"),
        ] = None,
        since: Annotated[str | None, typer.Option(help="only requests from this ISO date/time on")] = None,
        min_fidelity: Annotated[
            float | None,
            typer.Option("--min-fidelity", help="exit 1 when fidelity is below this with its 95% interval"),
        ] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON here")] = None,
    ) -> None:
        """The deployed cascade on its shadowed requests, per day: fidelity to the reference (95% CI), cost per
        request against always the reference, and the shadow spend."""
        from rich.console import Console

        from ..core.errors import ConfigError
        from ..spend.report import _parse_when
        from . import audit as audit_mod

        console = Console(stderr=True)
        try:
            report = audit_mod.audit(from_ledger, reference, since=_parse_when(since, "--since"))
        except ConfigError as exc:
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        print(audit_mod.to_markdown(report))
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if min_fidelity is not None and audit_mod.below(report, min_fidelity):
            console.print(f"fidelity below {min_fidelity} (95% interval {report['total']['fidelity_ci95']})")
            raise typer.Exit(1)


def _from_ledger(
    console: Any,
    url: str,
    reference: str | None,
    since: str | None,
    gold: Path | None,
    suggest: int | None,
    out: Path | None,
    models: str | None,
    normalizer: str | None,
    emit: Path | None,
    emit_name: str,
    shadow_rate: float,
    json_out: Path | None,
    target_args: dict[str, Any],
    *,
    judge: str | None = None,
    judge_config: Path | None = None,
    judge_check: int = 50,
    max_memory: float | None = None,
) -> None:
    from ..core.errors import ConfigError
    from ..spend.report import _parse_when
    from . import ledger_cli, ledger_report
    from .calibrate import Target
    from .records import RecordError

    try:
        opts = ledger_cli.Options(
            url,
            reference,
            since=_parse_when(since, "--since"),
            gold=gold,
            suggest=suggest,
            out=out,
            models=models.split(",") if models else None,
            normalizer=normalizer,
            emit=emit,
            emit_name=emit_name,
            shadow_rate=shadow_rate,
            json_out=json_out,
            judge=judge,
            judge_config=judge_config,
            judge_check=judge_check,
            max_memory=None if max_memory is None else int(max_memory * 2**30),
        )
        with _phases(console) as progress:
            report = ledger_cli.run(opts, Target(**target_args), progress=progress)
    except (RecordError, ConfigError) as exc:
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    if suggest is not None and judge is None:
        print(json.dumps(report))
        return
    print(ledger_report.to_markdown(report))


@contextlib.contextmanager
def _phases(console: Any) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar with an ETA on a terminal, one phase at a time: ``progress(stage, done, total)`` starts a new
    bar when the stage changes (so the ETA is the phase's own: reading the ledger, fitting, scoring candidates)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("calibrating", total=1)
        phase = [""]

        def progress(stage: str, done: int, total: int) -> None:
            if stage != phase[0]:
                phase[0] = stage
                bar.reset(task, total=max(total, 1), description=stage)
            bar.update(task, completed=done, total=max(total, 1))

        yield progress
        bar.update(task, description="done", completed=1, total=1)


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
        rows: Annotated[
            str | None, typer.Option("--rows", help="a slice START:STOP of the task's examples (e.g. 0:500, 500:)")
        ] = None,
        ledger: Annotated[
            str | None,
            typer.Option(
                "--ledger",
                help="ledger (path or database URL) recording every call, shadow observations included "
                "(default: <out>/ledger.sqlite3; never the cascade file's own ledger)",
            ),
        ] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="also write the JSON report here")] = None,
        concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="requests in flight")] = 32,
    ) -> None:
        """Run a cascade over a benchmark task, live or replayed from recorded runs; write the md/json/png report."""
        import dataclasses

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ..core.errors import ConfigError
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
            if rows is not None:
                examples = examples[_row_slice(rows)]
                if not examples:
                    raise ConfigError("--rows", f"{rows} selects none of the task's examples")
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
                    ledger=ledger or folder / "ledger.sqlite3",
                )
        except (ConfigError, RecordError) as exc:
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        paths = write_report(report, folder)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(to_markdown(report))
        console.print("report: " + ", ".join(str(p) for p in paths.values()), soft_wrap=True)
        keys = ("task", "mode", "n", "accuracy", "escalation_rate", "cost_per_request_usd", "calls")
        print(json.dumps({k: report[k] for k in keys}))


def _row_slice(text: str) -> slice:
    """``START:STOP`` (either may be empty) as a slice of the examples; a ConfigError naming --rows otherwise."""
    from ..core.errors import ConfigError

    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return slice(int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise ConfigError("--rows", f"expected START:STOP (e.g. 0:500 or 500:), got {text!r}") from None
