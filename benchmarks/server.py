"""What the proxy hop costs: `llm-cascade serve` in front of the recorded-answer server, against calling it directly.

    .venv/bin/python benchmarks/server.py [--samples 300] [--load 2000] [--concurrency 16]

Starts the recorded-answer server (``python -m llm_cascade.testing.server``, answering at once, from the rational
MMLU runs when ../shared/data is there, else "B" for everything) and ``llm-cascade serve --config
examples/cascade.toml`` in front of it (ledger: a fresh SQLite file, written on every request as in production).

Latency: for questions on which tier 0 agrees, one request at a time, alternating
  direct  - the tier-0 calls (llama3.1-8b and gpt-4o-mini) sent concurrently straight to the recorded server,
  proxy   - the same question through the proxy (which makes those same two calls, then normalises, votes, prices,
            writes the ledger and answers),
so ``added_ms_pXX = pXX(proxy) - pXX(direct)`` is what the hop adds. Throughput: ``--concurrency`` clients send
``--load`` requests (the whole question mix, escalations included) through the proxy; ``rps`` is completed requests
per second. The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("LLM_CASCADE_DATA", REPO.parent / "shared" / "data"))
TIER0 = ("llama3.1-8b", "gpt-4o-mini")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def questions(limit: int) -> tuple[list[str], list[str], Path | None]:
    """(prompts where tier 0 agrees, every prompt, data file) from recorded MMLU, or synthetic prompts."""
    path = DATA / "rational" / "mmlu_train.jsonl.gz"
    if not path.exists():
        prompts = [f"Question {i}: pick A, B, C or D." for i in range(limit)]
        return prompts, prompts, None
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    every = [r["user_prompt"] for r in rows[:limit]]
    agree = [r["user_prompt"] for r in rows[:limit] if len({r["models"][m]["answer"] for m in TIER0}) == 1]
    return agree, every, path


def start_recorded(data: Path | None) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "llm_cascade.testing.server", "--port", "0"]
    args += ["--data", str(data)] if data is not None else ["--default", "B"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:  # warnings may come first; the "serving ... on http://host:port" line says it is up
        seen += line
        m = re.search(r"serving .* on http://[\d.]+:(\d+)", line)
        if m is not None:
            return proc, f"http://127.0.0.1:{m.group(1)}"
    proc.kill()
    raise RuntimeError(f"recorded server did not start: {seen[-2000:]}")


def start_proxy(recorded_url: str, ledger: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "RECORDED_BASE_URL": f"{recorded_url}/v1", "LLM_CASCADE_LEDGER_URL": f"sqlite:///{ledger}"}
    cmd = [sys.executable, "-c", "from llm_cascade.cli import main; main()", "serve"]
    cmd += ["--config", str(REPO / "examples" / "cascade.toml"), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            proc.kill()
            raise RuntimeError(f"llm-cascade serve did not start: {err}")
        time.sleep(0.05)


def body(model: str, prompt: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}


async def direct(client: httpx.AsyncClient, url: str, prompt: str) -> float:
    start = time.perf_counter()
    rs = await asyncio.gather(*(client.post(f"{url}/v1/chat/completions", json=body(m, prompt)) for m in TIER0))
    elapsed = time.perf_counter() - start
    for r in rs:
        r.raise_for_status()
    return elapsed


async def proxied(client: httpx.AsyncClient, url: str, prompt: str) -> float:
    start = time.perf_counter()
    r = await client.post(f"{url}/v1/chat/completions", json=body("mmlu", prompt))
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def measure(
    recorded: str, proxy: str, agree: list[str], every: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for p in agree[:30]:  # warm up connections, imports and caches on both paths
            await direct(client, recorded, p)
            await proxied(client, proxy, p)
        d_ms: list[float] = []
        p_ms: list[float] = []
        for i in range(args.samples):
            prompt = agree[i % len(agree)]
            d_ms.append(await direct(client, recorded, prompt) * 1000)
            p_ms.append(await proxied(client, proxy, prompt) * 1000)

        queue = [every[i % len(every)] for i in range(args.load)]
        done = 0

        async def worker() -> None:
            nonlocal done
            while queue:
                await proxied(client, proxy, queue.pop())
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "direct_ms_p50": round(pct(d_ms, 50), 3),
        "direct_ms_p99": round(pct(d_ms, 99), 3),
        "proxy_ms_p50": round(pct(p_ms, 50), 3),
        "proxy_ms_p99": round(pct(p_ms, 99), 3),
        "added_ms_p50": round(pct(p_ms, 50) - pct(d_ms, 50), 3),
        "added_ms_p99": round(pct(p_ms, 99) - pct(d_ms, 99), 3),
        "added_ms_mean": round(statistics.fmean(p_ms) - statistics.fmean(d_ms), 3),
        "rps": round(done / elapsed, 1),
        "samples": args.samples,
        "load_requests": done,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=300, help="sequential latency samples per path")
    parser.add_argument("--load", type=int, default=2000, help="requests in the throughput run")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients in the throughput run")
    parser.add_argument("--questions", type=int, default=285, help="recorded MMLU questions to draw from")
    args = parser.parse_args()
    agree, every, data = questions(args.questions)
    recorded, recorded_url = start_recorded(data)
    tmp = Path(tempfile.mkdtemp(prefix="llmc-bench-"))
    try:
        proxy, proxy_url = start_proxy(recorded_url, tmp / "spend.db")
        try:
            result = asyncio.run(measure(recorded_url, proxy_url, agree, every, args))
        finally:
            proxy.terminate()
            proxy.wait(10)
    finally:
        recorded.terminate()
        recorded.wait(10)
    result["data"] = "rational/mmlu_train" if data is not None else "synthetic (recorded server --default B)"
    print(
        f"direct p50 {result['direct_ms_p50']} ms, p99 {result['direct_ms_p99']} ms | "
        f"proxy p50 {result['proxy_ms_p50']} ms, p99 {result['proxy_ms_p99']} ms | "
        f"{result['rps']} req/s at concurrency {args.concurrency} on {result['cpus']} CPUs"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
