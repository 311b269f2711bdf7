"""Time to first byte of a streamed answer through the proxy, on a one-member tier, against the upstream's own.

    python benchmarks/stream_ttfb.py [--requests 300] [--slow 0.02] [--paced 0.02] [--rounds 3] [--no-relay]

The upstream is the recorded-answer server (its own process), answering every prompt with a 40-word text after
``--slow`` seconds of silence (a slow first byte, as a model's prefill); the proxy (``llm-cascade serve``'s app on
uvicorn, its own process) serves a cascade of one tier with that one member, on the lean HTTP transport. The client
sends ``stream: true`` requests in turn to the upstream, to the proxy and to a relay (which goes first rotates too),
each with a prompt of its own, and times each response's first line with answer text (httpx, one keep-alive
connection each). A proxy that decided the answer first would show the whole answer's time; one that streams shows
the upstream's first byte plus its own overhead.

By default the upstream sends its 40 chunks in one burst, so the proxy re-encodes the other 39 while the client waits
for a core to read the first: on a 2-core machine that is part of what the proxy's figure shows. ``--paced SECONDS``
spaces the tokens as a model does (tens of ms apart): the upstream (then served by this script, the same recorded
answers behind a send that sleeps) sends the role chunk and the first token together, then one chunk per interval.
A paced request lasts about 40 x SECONDS, so pass fewer ``--requests``; the overhead is computed the same way.

The relay (``--relay``: its own process, on uvloop like the proxy) forwards bytes between client and upstream and does
nothing else: the proxy path's process count and wake-ups (client -> relay -> upstream and back) at no work of its
own. The proxy's overhead over the upstream (the issue's figure) is then the hop's (relay over upstream: what any
process in between costs on this machine) plus the proxy's own work (proxy over relay). On a 2-core machine shared with
other jobs the hop's part moves with the load: with three processes on two cores a wake-up can wait for a core.

One JSON line per round with ``upstream_ttfb_ms_p50``, ``proxy_ttfb_ms_p50``, their difference (``overhead_ms_p50``),
``relay_ttfb_ms_p50`` with ``hop_ms_p50`` (relay - upstream) and ``proxy_over_relay_ms_p50``, p90s and the load
average (the figure moves with it on a shared machine); the rounds share the servers.
"""

from __future__ import annotations

import argparse
import asyncio
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
from typing import Any, cast

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


class _Pipe(asyncio.Protocol):
    """One direction of the relay: what arrives here is written to ``peer`` (the other side's transport)."""

    def __init__(self) -> None:
        self.peer: asyncio.Transport | None = None
        self.early: list[bytes] = []  # what the client sent before the upstream connection was open
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()


def _relay(port: int, target: int) -> None:
    """Forward every connection to ``port`` to ``target`` (bytes only), until killed."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()

        connecting: set[asyncio.Task[None]] = set()

        def accept() -> _Pipe:
            down = _Pipe()

            async def connect() -> None:
                _, up = await loop.create_connection(_Pipe, "127.0.0.1", target)
                assert down.transport is not None and up.transport is not None
                up.peer, down.peer = down.transport, up.transport
                for data in down.early:
                    up.transport.write(data)
                down.early.clear()

            task = loop.create_task(connect())
            connecting.add(task)
            task.add_done_callback(connecting.discard)
            return down

        server = await loop.create_server(accept, "127.0.0.1", port)
        await server.serve_forever()

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


def _paced_upstream(port: int, slow: float, pace: float) -> None:
    """The recorded-answer server with its stream's chunks ``pace`` seconds apart after the first token, until
    killed (the role chunk and the first token leave together, as a model's do after its prefill)."""
    from llm_cascade.testing.answers import AnswerBook
    from llm_cascade.testing.server import RecordedAnswerApp, _make_server

    app = RecordedAnswerApp(AnswerBook(default=TEXT), faults={"solo": f"slow:delay_s={slow}"})

    async def paced(scope: Any, receive: Any, send: Any) -> None:
        sent = 0

        async def spaced(message: Any) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                if sent >= 2:
                    await asyncio.sleep(pace)
                sent += 1
            await send(message)

        await app(scope, receive, spaced)

    server, sock = _make_server(paced, "127.0.0.1", port)  # type: ignore[arg-type]  # any ASGI app will do
    server.run(sockets=[sock])


@contextlib.contextmanager
def _servers(slow: float, pace: float) -> Iterator[tuple[str, str, str]]:
    up_port, proxy_port, relay_port = _free_port(), _free_port(), _free_port()
    if pace:
        command = [sys.executable, __file__, "--upstream", str(up_port), str(slow), str(pace)]
    else:
        command = [sys.executable, "-m", "llm_cascade.testing.server", "--port", str(up_port), "--default", TEXT,
                   "--fault", f"solo=slow:delay_s={slow}"]  # fmt: skip
    upstream = subprocess.Popen(command, stdout=subprocess.DEVNULL)
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
        relay = subprocess.Popen([sys.executable, __file__, "--relay", str(relay_port), str(up_port)])
        try:
            _wait(f"http://127.0.0.1:{up_port}/v1/models", upstream)
            _wait(f"http://127.0.0.1:{proxy_port}/health", proxy)
            _wait(f"http://127.0.0.1:{relay_port}/v1/models", relay)
            yield (
                f"http://127.0.0.1:{up_port}/v1",
                f"http://127.0.0.1:{proxy_port}/v1",
                f"http://127.0.0.1:{relay_port}/v1",
            )
        finally:
            for p in (relay, proxy, upstream):
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
    parser.add_argument(
        "--paced", type=float, default=0.0, metavar="SECONDS", help="upstream's interval between tokens (0: one burst)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-relay", action="store_true", help="time the upstream and the proxy only (alternately)")
    parser.add_argument("--relay", nargs=2, type=int, metavar=("PORT", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--upstream", nargs=3, type=float, metavar=("PORT", "SLOW", "PACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        return _relay(*args.relay)
    if args.upstream:
        port, slow, pace = args.upstream
        return _paced_upstream(int(port), slow, pace)
    with contextlib.ExitStack() as stack:
        upstream, proxy, relay = stack.enter_context(_servers(args.slow, args.paced))
        a, b, c = (stack.enter_context(httpx.Client(timeout=30)) for _ in range(3))
        paths = [(a, upstream), (b, proxy)] + ([] if args.no_relay else [(c, relay)])
        for _ in range(5 if args.paced else 20):  # warm-up: connections, the proxy's pool, tokenizer
            for client, url in paths:
                _ttfb(client, url, "solo")
        for _ in range(args.rounds):
            times: list[list[float]] = [[] for _ in paths]
            for i in range(args.requests):
                for j in range(len(paths)):  # each path goes first, second ... equally often
                    k = (i + j) % len(paths)
                    times[k].append(_ttfb(*paths[k], "solo"))
            _report(args, *times)


def _report(args: argparse.Namespace, up: list[float], px: list[float], relay: list[float] | None = None) -> None:
    ms = lambda xs, q: statistics.quantiles(xs, n=100)[q - 1] * 1000  # noqa: E731
    out = {
        "requests": args.requests,
        "upstream_slow_s": args.slow,
        "upstream_paced_s": args.paced,
        "upstream_ttfb_ms_p50": round(statistics.median(up) * 1000, 3),
        "proxy_ttfb_ms_p50": round(statistics.median(px) * 1000, 3),
        "overhead_ms_p50": round((statistics.median(px) - statistics.median(up)) * 1000, 3),
        "upstream_ttfb_ms_p90": round(ms(up, 90), 3),
        "proxy_ttfb_ms_p90": round(ms(px, 90), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if relay:
        out["relay_ttfb_ms_p50"] = round(statistics.median(relay) * 1000, 3)
        out["hop_ms_p50"] = round((statistics.median(relay) - statistics.median(up)) * 1000, 3)
        out["proxy_over_relay_ms_p50"] = round((statistics.median(px) - statistics.median(relay)) * 1000, 3)
        out["relay_ttfb_ms_p90"] = round(ms(relay, 90), 3)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
