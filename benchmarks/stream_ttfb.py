"""Time to first byte of a streamed answer through the proxy, on a one-member tier, against the upstream's own.

    python benchmarks/stream_ttfb.py [--requests 300] [--slow 0.02] [--rounds 3]

The upstream is the recorded-answer server (its own process), answering every prompt with a 40-word text after
``--slow`` seconds of silence (a slow first byte, as a model's prefill); the proxy (``llm-cascade serve``'s app on
uvicorn, its own process) serves a cascade of one tier with that one member, on the lean HTTP transport. The client
sends ``stream: true`` requests alternately to the upstream and to the proxy (which goes first alternates too), each
with a prompt of its own, and times each response's first line with answer text (httpx, one keep-alive connection
each). A proxy that decided the answer first would show the whole answer's
time; one that streams shows the upstream's first byte plus its own overhead.

One JSON line per round with ``upstream_ttfb_ms_p50``, ``proxy_ttfb_ms_p50``, their difference (``overhead_ms_p50``),
p90s and the load average (the figure moves with it on a shared machine); the rounds share the servers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

TEXT = " ".join(f"word{i}" for i in range(40))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited")
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not start")


@contextlib.contextmanager
def _servers(slow: float) -> Iterator[tuple[str, str]]:
    up_port, proxy_port = _free_port(), _free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "llm_cascade.testing.server", "--port", str(up_port), "--default", TEXT,
         "--fault", f"solo=slow:delay_s={slow}"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "cascade.toml"
        config.write_text(
            f"""
[providers.up]
type = "openai"
base_url = "http://127.0.0.1:{up_port}/v1"
api_key_env = "TTFB_KEY"
options = {{transport = "http"}}
[ledger]
url = "sqlite:///{tmp}/spend.db"
[cascades.solo]
[[cascades.solo.tiers]]
members = ["up:solo"]
"""
        )
        code = "from llm_cascade.serve.cli import main; main()"
        proxy = subprocess.Popen(
            [sys.executable, "-c", code, "serve", "--config", str(config), "--port", str(proxy_port), "--no-check"],
            env={**os.environ, "TTFB_KEY": "unused"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait(f"http://127.0.0.1:{up_port}/v1/models", upstream)
            _wait(f"http://127.0.0.1:{proxy_port}/health", proxy)
            yield f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{proxy_port}/v1"
        finally:
            for p in (proxy, upstream):
                p.terminate()
                p.wait(10)


_PROMPTS = iter(range(10**9))


def _ttfb(client: httpx.Client, url: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": f"q{next(_PROMPTS)}"}], "stream": True}
    start = time.perf_counter()
    with client.stream("POST", f"{url}/chat/completions", json=body, headers={"authorization": "Bearer x"}) as r:
        first = None
        for line in r.iter_lines():
            if first is None and line.startswith("data: ") and '"content"' in line and '"content":""' not in line:
                first = time.perf_counter() - start
    if first is None:
        raise RuntimeError("no content chunk")
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--slow", type=float, default=0.02, help="upstream's silence before its answer, seconds")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with _servers(args.slow) as (upstream, proxy), httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b:
        for _ in range(20):  # warm-up: connections, the proxy's pool, tokenizer
            _ttfb(a, upstream, "solo"), _ttfb(b, proxy, "solo")
        for _ in range(args.rounds):
            up, px = [], []
            for i in range(args.requests):
                if i % 2:
                    px.append(_ttfb(b, proxy, "solo"))
                    up.append(_ttfb(a, upstream, "solo"))
                else:
                    up.append(_ttfb(a, upstream, "solo"))
                    px.append(_ttfb(b, proxy, "solo"))
            _report(args, up, px)


def _report(args: argparse.Namespace, up: list[float], px: list[float]) -> None:
    ms = lambda xs, q: statistics.quantiles(xs, n=100)[q - 1] * 1000  # noqa: E731
    out = {
        "requests": args.requests,
        "upstream_slow_s": args.slow,
        "upstream_ttfb_ms_p50": round(statistics.median(up) * 1000, 3),
        "proxy_ttfb_ms_p50": round(statistics.median(px) * 1000, 3),
        "overhead_ms_p50": round((statistics.median(px) - statistics.median(up)) * 1000, 3),
        "upstream_ttfb_ms_p90": round(ms(up, 90), 3),
        "proxy_ttfb_ms_p90": round(ms(px, 90), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
