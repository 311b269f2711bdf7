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
per second, ``proxy_cpu_ms_per_request`` the proxy process's CPU per completed request (user + system, from /proc):
the figure a busy, shared machine distorts least. ``proxy_uvloop`` and ``proxy_httptools`` say whether the proxy
process really has them loaded (from /proc/<pid>/maps).

The proxy reaches its OpenAI-compatible upstream over the lean HTTP transport (the default for a provider with a
``base_url``, see ``llm_cascade.backends.http``). ``--compare-sdk`` starts a second proxy whose members use the openai
SDK instead, measured in the same run (samples interleaved: direct, lean proxy, SDK proxy): its figures are the
``sdk_*`` keys. The last line is JSON.
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


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_proxy(recorded_url: str, ledger: Path, transport: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``llm-cascade serve`` on examples/cascade.toml; ``transport`` overrides the members' (a copy of the file)."""
    port = free_port()
    env = {**os.environ, "RECORDED_BASE_URL": f"{recorded_url}/v1", "LLM_CASCADE_LEDGER_URL": f"sqlite:///{ledger}"}
    config = REPO / "examples" / "cascade.toml"
    if transport is not None:
        text = config.read_text() + f'\n[providers.recorded.options]\ntransport = "{transport}"\n'
        config = ledger.with_name(f"cascade-{transport}.toml")
        config.write_text(text)
    cmd = [sys.executable, "-c", "from llm_cascade.serve.cli import main; main()", "serve"]
    cmd += ["--config", str(config), "--port", str(port)]
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


def fast_io_in_use(pid: int) -> dict[str, bool]:
    """Whether process ``pid`` has uvloop's and httptools' compiled modules mapped (Linux /proc): the proof that the
    proxy measured runs on them, not on asyncio's loop and h11 (``llm-cascade serve`` picks them when installed)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return {}
    return {"uvloop": "/uvloop/" in maps, "httptools": "/httptools/" in maps}


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
    recorded: str, proxies: dict[str, tuple[int, str]], agree: list[str], every: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Latency samples (direct and each proxy, interleaved), then a throughput run per proxy. ``proxies``: label ->
    (pid, url); the label "lean" gives the unprefixed keys, any other label prefixes its keys."""
    limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for p in agree[:30]:  # warm up connections, imports and caches on both paths
            await direct(client, recorded, p)
            for _, url in proxies.values():
                await proxied(client, url, p)
        d_ms: list[float] = []
        p_ms: dict[str, list[float]] = {label: [] for label in proxies}
        for i in range(args.samples):
            prompt = agree[i % len(agree)]
            d_ms.append(await direct(client, recorded, prompt) * 1000)
            for label, (_, url) in proxies.items():
                p_ms[label].append(await proxied(client, url, prompt) * 1000)

        out: dict[str, Any] = {
            "direct_ms_p50": round(pct(d_ms, 50), 3),
            "direct_ms_p99": round(pct(d_ms, 99), 3),
        }
        for label, (pid, url) in proxies.items():
            queue = [every[i % len(every)] for i in range(args.load)]
            done = 0

            async def worker(url: str = url, queue: list[str] = queue) -> None:
                nonlocal done
                while queue:
                    await proxied(client, url, queue.pop())
                    done += 1

            cpu0, start = process_cpu_s(pid), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            elapsed, cpu = time.perf_counter() - start, process_cpu_s(pid) - cpu0
            ms = p_ms[label]
            key = "" if label == "lean" else f"{label}_"
            out |= {
                f"{key}proxy_ms_p50": round(pct(ms, 50), 3),
                f"{key}proxy_ms_p99": round(pct(ms, 99), 3),
                f"{key}added_ms_p50": round(pct(ms, 50) - pct(d_ms, 50), 3),
                f"{key}added_ms_p99": round(pct(ms, 99) - pct(d_ms, 99), 3),
                f"{key}added_ms_mean": round(statistics.fmean(ms) - statistics.fmean(d_ms), 3),
                f"{key}rps": round(done / elapsed, 1),
                f"{key}proxy_cpu_ms_per_request": round(cpu / done * 1000, 3) if cpu else None,
            }
            out |= {f"{key}proxy_{lib}": used for lib, used in fast_io_in_use(pid).items()}
    return out | {
        "samples": args.samples,
        "load_requests": args.load,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=300, help="sequential latency samples per path")
    parser.add_argument("--load", type=int, default=2000, help="requests in the throughput run")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients in the throughput run")
    parser.add_argument("--questions", type=int, default=285, help="recorded MMLU questions to draw from")
    parser.add_argument("--compare-sdk", action="store_true", help="also measure a proxy whose members use the SDK")
    args = parser.parse_args()
    agree, every, data = questions(args.questions)
    recorded, recorded_url = start_recorded(data)
    tmp = Path(tempfile.mkdtemp(prefix="llmc-bench-"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        proxies: dict[str, tuple[int, str]] = {}
        for label in ("lean", "sdk") if args.compare_sdk else ("lean",):
            proc, url = start_proxy(recorded_url, tmp / f"spend-{label}.db", None if label == "lean" else label)
            started.append(proc)
            proxies[label] = (proc.pid, url)
        result = asyncio.run(measure(recorded_url, proxies, agree, every, args))
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(10)
        recorded.terminate()
        recorded.wait(10)
    result["data"] = "rational/mmlu_train" if data is not None else "synthetic (recorded server --default B)"
    print(
        f"direct p50 {result['direct_ms_p50']} ms, p99 {result['direct_ms_p99']} ms | "
        f"proxy p50 {result['proxy_ms_p50']} ms, p99 {result['proxy_ms_p99']} ms | "
        f"{result['rps']} req/s at concurrency {args.concurrency} on {result['cpus']} CPUs,"
        f" {result['proxy_cpu_ms_per_request']} ms proxy CPU per request"
        f" (uvloop: {result.get('proxy_uvloop')}, httptools: {result.get('proxy_httptools')})"
    )
    if args.compare_sdk:
        print(
            f"  SDK members: proxy p50 {result['sdk_proxy_ms_p50']} ms (added {result['sdk_added_ms_p50']} ms) | "
            f"{result['sdk_rps']} req/s, {result['sdk_proxy_cpu_ms_per_request']} ms proxy CPU per request"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
