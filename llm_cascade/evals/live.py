"""Live mode: ask real models a benchmark's questions through the Router and record what each said.

Every model is asked every question (one tier holding all of them, so the Router's normalizer, pricing and error
handling are the ones used in production), and the result is written in the recorded-run format, ready for the
simulator and calibration. :class:`CachingBackend` keeps every completion in SQLite keyed by a hash of the model and
the request, so a rerun, or a second benchmark sharing prompts, costs nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..core.agreement import Always
from ..core.errors import MissingDependencyError
from ..core.normalize import Normalizer
from ..core.router import Pricer, Router, Tier
from ..core.types import Completion, Request, Usage
from .records import ModelRun, Record


def request_key(model: str, request: Request) -> str:
    """Stable hash of what determines a completion: model, messages and generation settings (not ids or tags)."""
    body = {
        "model": model,
        "messages": [[m.role, m.content] for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "logprobs": request.logprobs,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class CachingBackend:
    """Wraps a backend; completions are stored in SQLite and replayed on the same request. A wrapper is a backend."""

    def __init__(self, inner: Backend, path: str | Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.supports_logprobs = inner.supports_logprobs
        self.hits = 0
        self.misses = 0
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, body TEXT NOT NULL)")

    def _get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM completions WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        d = json.loads(row[0])
        return Completion(
            text=d["text"],
            model=d["model"],
            usage=Usage(d["input_tokens"], d["output_tokens"], d.get("cached_tokens", 0), d.get("estimated", False)),
            latency_s=d["latency_s"],
            finish_reason=d.get("finish_reason"),
            logprob=d.get("logprob"),
            confidence=d.get("confidence"),
        )

    def _put(self, key: str, c: Completion) -> None:
        body = {
            "text": c.text,
            "model": c.model,
            "input_tokens": c.usage.input_tokens,
            "output_tokens": c.usage.output_tokens,
            "cached_tokens": c.usage.cached_tokens,
            "estimated": c.usage.estimated,
            "latency_s": c.latency_s,
            "finish_reason": c.finish_reason,
            "logprob": c.logprob,
            "confidence": c.confidence,
        }
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO completions VALUES (?, ?)", (key, json.dumps(body)))

    async def complete(self, request: Request) -> Completion:
        key = request_key(self.name, request)
        cached = await asyncio.to_thread(self._get, key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        completion = await self.inner.complete(request)
        await asyncio.to_thread(self._put, key, completion)
        return completion

    def close(self) -> None:
        with self._lock:
            self._db.close()


def load_benchmark(path: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a local benchmark file (JSON lines, CSV, parquet) through ``datasets``."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("datasets", "eval") from None
    p = Path(path)
    kind = {".jsonl": "json", ".json": "json", ".gz": "json", ".csv": "csv", ".parquet": "parquet"}.get(
        p.suffix, "json"
    )
    ds = datasets.load_dataset(kind, data_files=str(p), split=split)
    return [dict(row) for row in ds]


async def record_benchmark(
    rows: Sequence[Mapping[str, Any]],
    backends: Sequence[Backend],
    *,
    normalizer: Normalizer | str,
    prices: Pricer | None = None,
    prompt_field: str = "prompt",
    gold_field: str | None = "gold",
    id_field: str = "id",
    logprobs: bool = True,
    concurrency: int = 8,
    on_done: Callable[[int], None] | None = None,
) -> list[Record]:
    """Ask every backend every row's prompt; returns records (unknown prices stay None)."""
    # no table given: costs stay unknown in the records (the Router would otherwise price by the shipped table)
    router = Router(
        [Tier(list(backends), Always(), name="all")],
        normalizer=normalizer,
        prices=prices if prices is not None else False,
    )
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(i: int, row: Mapping[str, Any]) -> Record:
        nonlocal done
        prompt = str(row[prompt_field])
        async with gate:
            # greedy, as before Request stopped defaulting to temperature 0: the same answers and cache keys
            result = await router.route(Request.from_prompt(prompt, logprobs=logprobs, temperature=0.0))
        runs = {}
        gold = None if gold_field is None or row.get(gold_field) is None else str(row[gold_field])
        for call in result.calls:
            runs[call.model] = ModelRun(
                answer=call.answer,
                text=call.text,
                correct=None if gold is None else call.answer == gold,
                tokens_in=call.usage.input_tokens,
                tokens_out=call.usage.output_tokens,
                cost_usd=None if call.cost_usd is None else float(call.cost_usd),
                latency_ms=1000 * call.latency_s,
                confidence=call.confidence,
            )
        done += 1
        if on_done is not None:
            on_done(done)
        return Record(str(row.get(id_field, i)), prompt, runs, gold)

    return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(rows))))
