"""Load under faults: N routed requests at concurrency C against the local recorded-answer server, ~5% of calls
to every model failing (500, 429, connection reset, 503, malformed JSON), through the real openai SDK, the one retry
layer, a shared concurrency cap, circuit breakers and the SQLite ledger.

About 1% of the questions are unknown to the server (404 from every model): those requests must end in a typed
error (AllTiersFailed), not an answer and not a stray exception.

Checks, printed and in the last line (JSON):
- every request ends answered or with a typed llm-cascade error (``untyped`` must be 0);
- no ledger row is lost: rows handed to the ledger == rows stored, and every HTTP request the server saw has a row;
- no task leaks (``asyncio.all_tasks()`` back to where it started);
- memory stays bounded (RSS after the first half vs at the end);
- throughput (requests/s) and latency p50/p99.

    .venv/bin/python benchmarks/load.py                       # 10,000 requests at concurrency 500
    .venv/bin/python benchmarks/load.py --requests 500 --concurrency 100

The server runs in its own process (``python -m llm_cascade.testing.server``) so that client and server do not share
one interpreter lock; tests import :func:`run_load` and point it at an in-process server instead.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_cascade import LLMCascadeError, Router, Tier
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.types import Call
from llm_cascade.resilience.limits import CircuitBreaker, RateLimit, Resilience
from llm_cascade.resilience.retry import RetryPolicy
from llm_cascade.spend.ledger import Ledger

TIER0 = ("load-a", "load-b", "load-c")
TIER1 = ("load-x", "load-y")
FAULT_RATE = 0.05
FAULTS = {
    "load-a": f"500:probability={FAULT_RATE}",
    "load-b": f"429:probability={FAULT_RATE},retry_after=0",
    "load-c": f"reset:probability={FAULT_RATE}",
    "load-x": f"malformed_json:probability={FAULT_RATE}",
    "load-y": f"503:probability={FAULT_RATE}",
}


def write_prompts(path: Path, n: int) -> list[str]:
    """A recorded-run file of ``n`` questions: tier 0 disagrees on some (b on every 7th, c on every 11th), and every
    100th question is missing, so every model answers 404 and the request must end in a typed error."""
    prompts = [f"Question {i}: what is 6 x 7?" for i in range(n)]
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i, prompt in enumerate(prompts):
            if i % 100 == 99:
                continue
            models = {m: {"answer": "42", "tokens_in": 20, "tokens_out": 3} for m in (*TIER0, *TIER1)}
            if i % 7 == 0:
                models["load-b"]["answer"] = "41"
            if i % 11 == 0:
                models["load-c"]["answer"] = "43"
            fh.write(json.dumps({"id": str(i), "prompt": prompt, "models": models}) + "\n")
    return prompts


class CountingSink:
    """Counts the rows the router hands to the ledger, to compare with what the ledger stored."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.handed = 0
        self.no_request = 0  # rows of calls that never reached the network (open circuit)

    def record(self, request_id: str, calls: Sequence[Call], metadata: dict[str, str]) -> None:
        self.handed += len(calls)
        self.no_request += sum(1 for c in calls if c.error is not None and c.error.startswith("CircuitOpenError"))
        self.ledger.record(request_id, calls, metadata)


def rss_mb() -> float:
    """Resident memory now (Linux /proc), else the peak."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else 0.0


async def run_load(
    base_url: str,
    prompts: Sequence[str],
    *,
    concurrency: int,
    ledger_path: Path,
    server_requests: Any = None,
) -> dict[str, Any]:
    """Route every prompt with ``concurrency`` workers; returns the figures (see the module docstring).

    ``server_requests``: a callable returning how many requests the server has received, for the row check.
    """
    res = Resilience(
        retry=RetryPolicy(attempts=3, initial=0.01, max_backoff=0.2, attempt_timeout=20, max_delay=60),
        limits={"openai": RateLimit(concurrency=int(os.environ.get("LOAD_CAP", "64")))},
        breaker=CircuitBreaker(failures=25, cooldown=1.0),
    )

    def backend(model: str) -> OpenAIBackend:
        return OpenAIBackend(model, base_url=base_url, api_key="sk-load-test-not-a-key", timeout=30)

    ledger = Ledger(ledger_path)
    sink = CountingSink(ledger)
    router = Router(
        [Tier([backend(m) for m in TIER0]), Tier([backend(m) for m in TIER1])],
        normalizer="number",
        ledger=sink,
        resilience=res,
        timeout=120,
    )
    tasks_before = set(asyncio.all_tasks())
    latencies: list[float] = []
    answered = 0
    typed: Counter[str] = Counter()
    untyped: Counter[str] = Counter()
    tiers: Counter[int] = Counter()
    next_index = 0
    rss_start = rss_mb()
    rss_half = 0.0

    async def worker() -> None:
        nonlocal next_index, answered, rss_half
        while next_index < len(prompts):
            i = next_index
            next_index += 1
            if i == len(prompts) // 2:
                rss_half = rss_mb()
            start = time.perf_counter()
            try:
                result = await router.route(prompts[i])
            except LLMCascadeError as exc:
                typed[type(exc).__name__] += 1
            except Exception as exc:
                untyped[f"{type(exc).__name__}: {exc}"[:200]] += 1
            else:
                answered += 1
                tiers[result.tier] += 1
            latencies.append(time.perf_counter() - start)

    wall = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, len(prompts))):
            tg.create_task(worker())
    wall = time.perf_counter() - wall
    await asyncio.sleep(0)
    # Tasks born during the run and still alive; a task that ended early (an SDK client's close) is not a leak.
    leaked = len({t for t in asyncio.all_tasks() if not t.done()} - tasks_before)
    ledger.flush()
    stored = ledger.count()
    outcomes = Counter(r.outcome for r in ledger.rows())
    ledger.close()
    server_seen = int(server_requests()) if server_requests is not None else None
    http_rows = stored - sink.no_request
    lost = (sink.handed - stored) + (max(0, server_seen - http_rows) if server_seen is not None else 0)
    return {
        "requests": len(prompts),
        "concurrency": concurrency,
        "answered": answered,
        "typed_errors": sum(typed.values()),
        "typed_error_kinds": dict(typed),
        "untyped": sum(untyped.values()),
        "untyped_kinds": dict(untyped),
        "answered_by_tier": {str(k): v for k, v in sorted(tiers.items())},
        "ledger_rows": stored,
        "rows_handed": sink.handed,
        "server_requests": server_seen,
        "row_outcomes": dict(outcomes),
        "lost_rows": lost,
        "leaked_tasks": leaked,
        "rss_start_mb": round(rss_start, 1),
        "rss_half_mb": round(rss_half, 1),
        "rss_end_mb": round(rss_mb(), 1),
        "wall_s": round(wall, 3),
        "rps": round(len(prompts) / wall, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else 0.0,
    }


def _stats(url: str) -> int:
    with urllib.request.urlopen(f"{url}/_stats", timeout=10) as resp:
        return sum(json.load(resp)["counts"].values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llm-cascade-load-") as tmp:
        data = Path(tmp) / "prompts.jsonl.gz"
        prompts = write_prompts(data, args.requests)
        cmd = [sys.executable, "-m", "llm_cascade.testing.server", "--port", "0", "--data", str(data)]
        cmd += ["--seed", str(args.seed)]
        for model, spec in FAULTS.items():
            cmd += ["--fault", f"{model}={spec}"]
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            url = line.strip().rsplit(" ", 1)[-1]
            if not url.startswith("http://"):
                raise SystemExit(f"the test server did not start: {line!r}")
            report = asyncio.run(
                run_load(
                    f"{url}/v1",
                    prompts,
                    concurrency=args.concurrency,
                    ledger_path=Path(tmp) / "ledger.sqlite3",
                    server_requests=lambda: _stats(url),
                )
            )
        finally:
            server.terminate()
            server.wait(timeout=10)
    for key, value in report.items():
        print(f"{key:>20}: {value}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
