"""``llm-cascade calibrate --from-ledger URL --reference MODEL``: the steps behind the command (no typer here).

suggest labels -> (a person labels them) -> calibrate with ``--gold`` -> ``--emit`` a config serving the choice, its
prices, its normalizer and a ``[shadow]`` section (so the cascade it deploys can be audited and calibrated again).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError
from .calibrate import Target
from .calibrate import calibrate as calibrate_runs
from .emit import LETTER, build_normalizer, checked, normalizer_spec, prices_toml, shadow_toml
from .from_ledger import LedgerRuns, read_gold, suggest_labels
from .ledger_columns import LedgerMatrix, ObservedGrid, read_grid
from .records import RunMatrix

DEFAULT_JUDGED = 200  # requests a judge labels when --suggest-labels does not say


@dataclass(frozen=True)
class Options:
    url: str
    reference: str | None  # None: the one the ledger records (evals.audit.recorded_reference)
    since: float | None = None
    gold: Path | None = None
    suggest: int | None = None
    out: Path | None = None
    models: Sequence[str] | None = None
    normalizer: str | None = None  # None: choice when every observed answer is a letter, else exact
    emit: Path | None = None
    emit_name: str = "calibrated"
    shadow_rate: float = 0.05
    json_out: Path | None = None
    judge: str | None = None  # a model that labels the suggested requests (evals.judge)
    judge_config: Path | None = None  # the serve config that defines the judge's provider and price
    judge_check: int = 50  # gold-labelled requests the judge also answers, to measure its agreement
    max_memory: int | None = None  # bytes the search may use (calibrate's max_memory): narrowed above it


def _redacted(url: str) -> str:
    from ..spend.ledger import _redact

    return _redact(url)


def _provider(models: Sequence[str]) -> str | None:
    """The one provider prefix every model shares, if any."""
    found = {m.partition(":")[0] for m in models if ":" in m}
    return found.pop() if len(found) == 1 and all(":" in m for m in models) else None


def run(opts: Options, target: Target, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Do what the options ask; returns the JSON report (also written to ``json_out``)."""

    if opts.suggest is not None and opts.out is None and opts.judge is None:
        raise ConfigError("--out", "--suggest-labels writes its list to --out FILE (JSON lines)")
    if opts.normalizer is not None:
        normalizer_spec(opts.normalizer)  # a typo fails now, before any work
    # Aggregated in the database and read in batches (evals.ledger_columns); a Record per used request only where
    # listing labels or asking a judge needs them.
    tagged = opts.gold is not None or opts.suggest is not None or opts.judge is not None  # labels join by tags
    grid = read_grid(opts.url, opts.reference, since=opts.since, with_tags=tagged, progress=progress)
    spec = _spec(opts, grid.answers_seen)
    gold = read_gold(opts.gold, build_normalizer(spec)) if opts.gold is not None else None
    columns = grid.runs(gold=gold, models=opts.models)
    if opts.suggest is None and opts.judge is None:
        del grid  # only the matrix is needed from here: its memory goes back before the search
        return _calibrated(opts, target, columns, columns.matrix, spec, None, progress)
    runs = columns.to_runs()
    judged: dict[str, Any] | None = None
    if opts.judge is not None:
        columns, judged = _judged(opts, grid, runs, gold, spec)
    elif opts.suggest is not None:
        assert opts.out is not None
        asked = suggest_labels(runs, opts.suggest)
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in asked), encoding="utf-8")
        report = {
            "source": f"ledger {_redacted(opts.url)}",
            "reference": runs.reference,
            "accuracy_means": runs.labels,
            "suggested": len(asked),
            "out": str(opts.out),
            "requests": len(runs.records),
        }
        _write(report, opts.json_out)
        return report
    return _calibrated(opts, target, columns, columns.matrix, spec, judged, progress)


def _spec(opts: Options, answers: Sequence[str]) -> str | dict[str, Any]:
    """The normalizer asked for, else ``choice`` when every observed answer is a letter, else ``exact``."""
    name = opts.normalizer or ("choice" if answers and all(LETTER.match(a) for a in answers) else "exact")
    return normalizer_spec(name, answers)


def _calibrated(
    opts: Options,
    target: Target,
    runs: LedgerRuns | LedgerMatrix,
    matrix: RunMatrix,
    spec: str | dict[str, Any],
    judged: dict[str, Any] | None,
    progress: Callable[[str, int, int], None] | None,
) -> dict[str, Any]:
    """Calibrate on the runs, build the report, ``--emit`` the config; returns the report."""
    from . import ledger_report

    chosen = calibrate_runs(matrix, target, progress=progress, max_memory=opts.max_memory)
    report, serve = ledger_report.build(runs, matrix, chosen, target, source=f"ledger {_redacted(opts.url)}")
    report["normalizer"] = spec
    if judged is not None:
        report["judge"] = judged
    if opts.emit is not None:
        provider = _provider(runs.models)
        from ..core.spec import CascadeSpec, TierSpec

        def strip(m: str) -> str:
            return m.partition(":")[2] if provider is not None else m

        emitted = CascadeSpec(tuple(TierSpec(tuple(strip(m) for m in t.models), t.rule) for t in serve.tiers))
        header = (
            f"Calibrated by `llm-cascade calibrate --from-ledger ... --reference {runs.reference}`: verdict "
            f"{report['verdict']}\nAccuracy here means {runs.labels}.\n{serve.describe()}"
        )
        text = emitted.to_toml(opts.emit_name, provider=provider or "", normalizer=spec, header=header)
        used = [m for t in serve.tiers for m in t.models]
        text += "\n" + prices_toml(runs.prices(used))
        pool = list(dict.fromkeys([runs.reference, *runs.models]))
        text += "\n" + shadow_toml(opts.shadow_rate, pool)
        if opts.shadow_rate > 0:  # /health then reports the deployed cascade's fidelity (needs a [ledger])
            text += f"\n[audit]\nreference = {json.dumps(runs.reference)}\n"
        opts.emit.parent.mkdir(parents=True, exist_ok=True)
        opts.emit.write_text(checked(text), encoding="utf-8")
        report["emitted"] = str(opts.emit)
    _write(report, opts.json_out)
    return report


def _judged(
    opts: Options, grid: ObservedGrid, runs: LedgerRuns, gold: dict[tuple[str, str], str] | None, spec: Any
) -> tuple[LedgerMatrix, dict[str, Any]]:
    """The judge labels the requests ``--suggest-labels`` would list (``--out`` gets them with its answers); the runs
    are built again with those labels (a ``--gold`` label wins)."""
    from .judge import judge

    assert opts.judge is not None
    asked = suggest_labels(runs, opts.suggest or DEFAULT_JUDGED)
    done = judge(
        runs,
        [a["request_id"] for a in asked],
        opts.judge,
        opts.url,
        spec,
        config=opts.judge_config,
        check=opts.judge_check,
    )
    labels = {("request_id", rid): answer for rid, answer in done.labels.items()}
    again = grid.runs(gold={**labels, **(gold or {})}, models=opts.models)
    by_judge = np.array([rid in done.labels for rid in again.matrix.ids], dtype=bool) & again.labelled
    again.judged = int(by_judge.sum())
    again.judge = opts.judge
    if opts.out is not None:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        rows = [{**a, "judge_answer": done.labels.get(a["request_id"])} for a in asked]
        opts.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return again, done.to_json()


def _write(report: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
