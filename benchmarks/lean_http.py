"""Client CPU per call of the two OpenAI transports (the openai SDK and the lean HTTP path), and routed calls per
second on one core at 50 ms provider latency and 64 calls in flight.

    python benchmarks/lean_http.py [--cpu-n 2000] [--calls 6000] [--latency 0.05] [--concurrency 64]

``benchmarks/overhead.py`` runs the same measurements and adds their figures to its last-line JSON.

The provider is a stub OpenAI-compatible server (aiohttp.web, in its own process) that answers every chat completion
with the same small body after ``x-latency-ms`` milliseconds. Client and stub are pinned to different cores
(``os.sched_setaffinity``) when the machine has two or more, so the client's figures are one core's.

- CPU per call: ``time.process_time()`` of the client over sequential ``backend.complete()`` calls, both transports
  interleaved in blocks so that machine noise hits both alike (the stub answers at once; waiting costs no CPU).
- Calls/s at c=64: ``Router([Tier([backend])]).route()`` from ``--concurrency`` workers, each call answered after
  ``--latency`` s; completed calls / wall time, and the client's CPU busy share (1.0: the core was the limit).
  The ceiling is concurrency / latency (1,280/s at 64 and 50 ms); bare aiohttp POSTs without the Router, measured
  in the same run (``raw_aiohttp_calls_per_s_c64``), show what the machine allows at that moment.
  ``*_calls_per_cpu_s_c64`` divides the rate by the client's CPU share: the calls one fully available core would
  carry CPU-wise, the honest figure on a shared machine where the pinned core also runs other processes;
  ``lean_client_cpu_wait_share_c64`` is the share of the run the client spent runnable but waiting for its core
  (Linux schedstat): well above zero, the rate measures the machine's other load, not the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROMPT = "Which letter comes second? A) a B) b C) c D) d"
_BODY = {
    "id": "chatcmpl-stub",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "B"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 21, "completion_tokens": 1, "total_tokens": 22},
}


# -- the stub provider (run as: python benchmarks/lean_http.py --stub) -------------------------------------------------


def stub_main() -> None:
    """Serve the stub on a free port and print it; answer after the request's ``x-latency-ms``."""
    from aiohttp import web

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    body = json.dumps(_BODY).encode()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        delay = request.headers.get("x-latency-ms")
        if delay:
            await asyncio.sleep(float(delay) / 1000)
        return web.Response(body=body, content_type="application/json")

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = runner.addresses[0][1]
        print(f"http://127.0.0.1:{port}/v1", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


def _cores() -> tuple[set[int], set[int]] | None:
    """(client core, stub core), or None on a one-core machine (or where affinity cannot be set)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, {cores[1]}) if len(cores) >= 2 else None


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_s() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux /proc/thread-self/schedstat; 0.0 elsewhere):
    on a shared core it is the time other processes held the core while this one had work to do."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


STUB_PID = 0


@contextlib.contextmanager
def stub_server() -> Iterator[str]:
    """The stub in its own process, pinned to the second core; yields its base URL (its pid in ``STUB_PID``)."""
    global STUB_PID
    pins = _cores()

    def pin() -> None:
        if pins is not None:
            os.sched_setaffinity(0, pins[1])

    proc = subprocess.Popen([sys.executable, __file__, "--stub"], stdout=subprocess.PIPE, text=True, preexec_fn=pin)
    STUB_PID = proc.pid
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def pinned_client() -> Iterator[bool]:
    """This process on the first core for the duration (True when pinned)."""
    pins = _cores()
    if pins is None:
        yield False
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, pins[0])
    try:
        yield True
    finally:
        os.sched_setaffinity(0, before)


def _backend(base_url: str, transport: str, latency_ms: float = 0.0) -> Any:
    from llm_cascade.backends.openai import OpenAIBackend

    headers = {"x-latency-ms": f"{latency_ms:g}"} if latency_ms else {}
    return OpenAIBackend(
        "m", base_url=base_url, api_key="unused", timeout=30, transport=transport, default_headers=headers
    )  # type: ignore[arg-type]


# -- measurements ------------------------------------------------------------------------------------------------------


async def cpu_per_call(base_url: str, n: int, block: int = 100) -> dict[str, float]:
    """Client CPU microseconds per ``complete()`` for each transport, measured in alternating blocks of ``block``."""
    from llm_cascade import Request

    backends = {t: _backend(base_url, t) for t in ("sdk", "http")}
    request = Request.from_prompt(PROMPT, temperature=0.0)
    for b in backends.values():  # imports, connections, caches
        for _ in range(100):
            assert (await b.complete(request)).text == "B"
    spent = dict.fromkeys(backends, 0.0)
    calls = dict.fromkeys(backends, 0)
    while min(calls.values()) < n:
        for name, b in backends.items():
            t0 = time.process_time()
            for _ in range(block):
                await b.complete(request)
            spent[name] += time.process_time() - t0
            calls[name] += block
    for b in backends.values():
        await b.aclose()
    return {name: spent[name] / calls[name] * 1e6 for name in backends}


async def routed_throughput(
    base_url: str, transport: str, calls: int, latency: float, concurrency: int
) -> dict[str, float]:
    """Routed calls/s through a one-member Router with ``concurrency`` calls in flight, the client's and the stub's CPU
    share. ``transport="raw"`` is the reference: bare aiohttp POSTs and orjson parses, no Router, no backend."""
    import aiohttp
    import orjson

    from llm_cascade import Router, Tier

    session: aiohttp.ClientSession | None = None
    backend: Any = None
    if transport == "raw":
        session = aiohttp.ClientSession()
        url = f"{base_url}/chat/completions"
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0.0})
        headers = {"Content-Type": "application/json", "x-latency-ms": f"{latency * 1000:g}"}

        async def call(s: aiohttp.ClientSession = session) -> None:
            async with s.post(url, data=body, headers=headers) as resp:
                assert orjson.loads(await resp.read())["choices"][0]["message"]["content"] == "B"

    else:
        backend = _backend(base_url, transport, latency * 1000)
        router = Router([Tier([backend])], normalizer="choice")

        async def call() -> None:
            assert (await router.route(PROMPT)).answer == "B"

    for _ in range(3):  # warm up: a pool of connections, imports
        await asyncio.gather(*(call() for _ in range(concurrency)))
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    cpu0, stub0, wait0, t0 = time.process_time(), process_cpu_s(STUB_PID), runqueue_wait_s(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stub, wait = process_cpu_s(STUB_PID) - stub0, runqueue_wait_s() - wait0
    if session is not None:
        await session.close()
    if backend is not None:
        await backend.aclose()
    return {
        "calls_per_s": calls / wall,
        "cpu_share": cpu / wall,
        "stub_cpu_share": stub / wall,
        "wait_share": wait / wall,
    }


async def raw_clients_cpu(base_url: str, n: int, block: int = 100) -> dict[str, float]:
    """Client CPU microseconds per bare POST + orjson parse, aiohttp against httpx (why the lean path uses aiohttp),
    and per lean ``complete()`` in the same interleaved blocks: the lean backend's own cost is the difference."""
    import aiohttp
    import httpx
    import orjson

    from llm_cascade import Request

    lean = _backend(base_url, "http")
    request = Request.from_prompt(PROMPT, temperature=0.0)
    url = f"{base_url}/chat/completions"
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0.0})
    headers = {"Content-Type": "application/json", "Authorization": "Bearer unused"}
    async with aiohttp.ClientSession() as session, httpx.AsyncClient() as client:

        async def with_aiohttp() -> Any:
            async with session.post(url, data=body, headers=headers) as resp:
                return orjson.loads(await resp.read())

        async def with_httpx() -> Any:
            return orjson.loads((await client.post(url, content=body, headers=headers)).content)

        async def with_lean() -> Any:
            return await lean.complete(request)

        clients = {"aiohttp": with_aiohttp, "httpx": with_httpx, "lean": with_lean}
        for fn in clients.values():
            for _ in range(100):
                await fn()
        spent = dict.fromkeys(clients, 0.0)
        for _ in range(max(1, n // block)):
            for name, fn in clients.items():
                t0 = time.process_time()
                for _ in range(block):
                    await fn()
                spent[name] += time.process_time() - t0
        await lean.aclose()
    return {name: spent[name] / (max(1, n // block) * block) * 1e6 for name in clients}


def _run(coro: Any, loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def default_loop() -> str:
    """uvloop where installed (as the proxy runs), else asyncio's own loop."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def measure(cpu_n: int = 2000, calls: int = 6000, latency: float = 0.05, concurrency: int = 64) -> dict[str, Any]:
    """Every figure of this benchmark, in one run: the JSON keys ``benchmarks/overhead.py`` reports."""
    loop = default_loop()
    with stub_server() as url, pinned_client() as pinned:
        cpu = _run(cpu_per_call(url, cpu_n), loop)
        lean = _run(routed_throughput(url, "http", calls, latency, concurrency), loop)
        sdk = _run(routed_throughput(url, "sdk", calls, latency, concurrency), loop)
        raw = _run(routed_throughput(url, "raw", calls, latency, concurrency), loop)
    return {
        "lean_cpu_us_per_call": round(cpu["http"], 1),
        "sdk_cpu_us_per_call": round(cpu["sdk"], 1),
        "lean_to_sdk_cpu": round(cpu["http"] / cpu["sdk"], 3),
        "lean_calls_per_s_c64": round(lean["calls_per_s"]),
        "lean_client_cpu_share_c64": round(lean["cpu_share"], 2),
        "lean_calls_per_cpu_s_c64": round(lean["calls_per_s"] / lean["cpu_share"]),
        "lean_stub_cpu_share_c64": round(lean["stub_cpu_share"], 2),
        "lean_client_cpu_wait_share_c64": round(lean["wait_share"], 2),
        "sdk_calls_per_s_c64": round(sdk["calls_per_s"]),
        "sdk_client_cpu_share_c64": round(sdk["cpu_share"], 2),
        "sdk_calls_per_cpu_s_c64": round(sdk["calls_per_s"] / sdk["cpu_share"]),
        "raw_aiohttp_calls_per_s_c64": round(raw["calls_per_s"]),
        "raw_aiohttp_client_cpu_share_c64": round(raw["cpu_share"], 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "c64_latency_ms": latency * 1000,
        "c64_concurrency": concurrency,
        "lean_loop": loop,
        "lean_pinned": pinned,
    }


def report(figures: dict[str, Any]) -> None:
    """The human-readable lines for :func:`measure`'s figures."""
    where = "client and stub on separate cores" if figures["lean_pinned"] else "unpinned (one core)"
    print(f"(c) OpenAI transports against a stub server ({where}, {figures['lean_loop']} loop)")
    print(
        f"    client CPU per call: SDK {figures['sdk_cpu_us_per_call']:.0f} µs,"
        f" lean {figures['lean_cpu_us_per_call']:.0f} µs ({figures['lean_to_sdk_cpu']:.2f}x)"
    )
    print(
        f"    routed calls/s at {figures['c64_latency_ms']:g} ms, c={figures['c64_concurrency']}: lean"
        f" {figures['lean_calls_per_s_c64']} (client CPU {figures['lean_client_cpu_share_c64']:.0%},"
        f" stub CPU {figures['lean_stub_cpu_share_c64']:.0%}, client waiting for its core"
        f" {figures['lean_client_cpu_wait_share_c64']:.0%} of the time), SDK"
        f" {figures['sdk_calls_per_s_c64']} (client CPU {figures['sdk_client_cpu_share_c64']:.0%})"
    )
    raw_share = figures["raw_aiohttp_client_cpu_share_c64"]
    print(
        f"    bare aiohttp, no router, same run: {figures['raw_aiohttp_calls_per_s_c64']} (client CPU {raw_share:.0%})"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stub", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu-n", type=int, default=2000, help="sequential calls per transport for CPU per call")
    parser.add_argument("--calls", type=int, default=6000, help="routed calls per transport in the c=64 run")
    parser.add_argument("--latency", type=float, default=0.05, help="stub provider latency, seconds")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--compare-clients", action="store_true", help="also time bare aiohttp and httpx POSTs against lean complete()"
    )
    args = parser.parse_args(argv)
    if args.stub:
        stub_main()
        return {}
    figures = measure(args.cpu_n, args.calls, args.latency, args.concurrency)
    report(figures)
    if args.compare_clients:
        with stub_server() as url, pinned_client():
            raw = _run(raw_clients_cpu(url, args.cpu_n), figures["lean_loop"])
        figures["aiohttp_raw_cpu_us_per_call"] = round(raw["aiohttp"], 1)
        figures["httpx_raw_cpu_us_per_call"] = round(raw["httpx"], 1)
        figures["lean_same_run_cpu_us_per_call"] = round(raw["lean"], 1)
        print(
            f"    bare POST + parse: aiohttp {raw['aiohttp']:.0f} µs, httpx {raw['httpx']:.0f} µs of client CPU;"
            f" lean complete() {raw['lean']:.0f} µs in the same blocks"
        )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
