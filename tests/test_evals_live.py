"""Live mode against the local OpenAI-compatible recorded-answer server: same format out, reruns cost nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from llm_cascade.evals.live import CachingBackend, load_benchmark, record_benchmark
from llm_cascade.evals.records import RunMatrix, load_records, save_records


def test_live_run_records_and_caches(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("openai")
    from llm_cascade.backends.openai import OpenAIBackend
    from llm_cascade.testing.server import RecordedServer

    source = load_records(data_dir / "rational" / "mmlu_train.jsonl.gz")[:12]
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": r.id, "prompt": r.prompt, "gold": r.gold}) + "\n" for r in source))
    rows = load_benchmark(bench)
    assert [r["id"] for r in rows] == [r.id for r in source]
    models = ["gpt-4o-mini", "llama3.1-8b", "qwen2.5-72b-instruct"]
    with RecordedServer(data_dir / "rational" / "mmlu_train.jsonl.gz") as server:

        def backends() -> list[CachingBackend]:
            return [
                CachingBackend(OpenAIBackend(m, base_url=server.base_url, api_key="unused", name=m), tmp_path / "c.db")
                for m in models
            ]

        first = backends()
        records = asyncio.run(record_benchmark(rows, first, normalizer="choice"))
        calls_after_first = sum(server.counts[m] for m in models)
        second = backends()
        again = asyncio.run(record_benchmark(rows, second, normalizer="choice"))
        assert sum(server.counts[m] for m in models) == calls_after_first == len(rows) * len(models)
        assert sum(b.hits for b in second) == len(rows) * len(models) and sum(b.misses for b in second) == 0
    for rec, src in zip(records, source, strict=True):
        for m in models:
            assert rec.models[m].answer == src.models[m].answer
            assert rec.models[m].correct == src.models[m].correct
            assert rec.models[m].tokens_in == src.models[m].tokens_in
            assert rec.models[m].cost_usd is None  # no price table given: unknown, not zero
            assert rec.models[m].confidence == pytest.approx(src.models[m].confidence)
    assert [r.models[m].answer for r in again for m in models] == [r.models[m].answer for r in records for m in models]
    save_records(records, tmp_path / "live.jsonl.gz")
    m = RunMatrix.from_records(load_records(tmp_path / "live.jsonl.gz"))
    assert sorted(m.unpriced()) == sorted(models)
