"""A small run of benchmarks/load.py in the test suite: faults injected at ~5% per model, every request answered or
a typed error, every call a ledger row (SQLite), no leaked task."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from _scripts import load_script

from llm_cascade.testing import RecordedServer


def _load_module() -> object:
    return load_script("llm_cascade_bench_load", "benchmarks/load.py")


@pytest.mark.slow
async def test_small_load_under_faults_loses_nothing(tmp_path: Path) -> None:
    load = _load_module()
    n = 300
    prompts = load.write_prompts(tmp_path / "prompts.jsonl.gz", n)  # type: ignore[attr-defined]
    with RecordedServer(tmp_path / "prompts.jsonl.gz", faults=load.FAULTS, seed=1) as server:  # type: ignore[attr-defined]
        report = await load.run_load(  # type: ignore[attr-defined]
            server.base_url,
            prompts,
            concurrency=100,
            ledger_path=tmp_path / "ledger.sqlite3",
            server_requests=lambda: sum(server.counts.values()),
        )
        injected = sum(server.injected.values())
        not_found = sum(server.unknown.values())
    assert report["untyped"] == 0, report["untyped_kinds"]
    assert report["answered"] + report["typed_errors"] == n
    assert report["typed_error_kinds"] == {"AllTiersFailed": n // 100}  # the questions the server does not know
    assert report["lost_rows"] == 0
    assert report["ledger_rows"] == report["rows_handed"] == report["server_requests"]
    assert report["leaked_tasks"] == 0
    unknown = n // 100
    # Every injected fault is exactly one error row, and so is each 404 of the unknown questions (5 models each,
    # fewer where a fault was drawn for that request instead).
    assert 0 < not_found <= unknown * 5
    assert injected > 0 and report["row_outcomes"]["error"] == injected + not_found
    assert report["answered_by_tier"]["1"] > 0  # disagreements and faults escalated
