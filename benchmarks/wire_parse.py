"""CPU per streamed response in the lean transport's HTTP/1.1 client (``llm_cascade.backends._wire``): parsing the
head and chunked framing, splitting the server-sent events.

    PYTHONPATH=. python benchmarks/wire_parse.py [--responses 200] [--repeats 7]

Each response is an OpenAI-shaped stream of 42 chunks (role, 40 tokens, finish), every response with an id and text
of its own. ``paced``: one ``data_received`` per chunk, as a model's spaced tokens arrive; ``burst``: the whole
response in one ``data_received``. Prints one JSON line: microseconds per response, median and best of the repeats.
Run it with another tree on ``PYTHONPATH`` to compare parsers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from llm_cascade.backends import _wire

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ndate: Mon, 07 Dec 2026 23:00:00 GMT\r\n"
    b"server: uvicorn\r\ntransfer-encoding: chunked\r\n\r\n"
)


def _response(k: int) -> list[bytes]:
    """The bytes of one response, cut where its chunks end."""
    deltas = [b'{"role":"assistant","content":""}'] + [b'{"content":" w%d-%d"}' % (k, i) for i in range(40)] + [b"{}"]
    parts = [HEAD]
    for i, delta in enumerate(deltas):
        finish = b'"stop"' if i == len(deltas) - 1 else b"null"
        event = b'data: {"id":"chatcmpl-%d","object":"chat.completion.chunk","model":"solo",' % k
        event += b'"choices":[{"index":0,"delta":%s,"finish_reason":%s}]}\n\n' % (delta, finish)
        parts.append(b"%x\r\n%s\r\n" % (len(event), event))
    parts[-1] += b"0\r\n\r\n"
    return parts


def _time(feeds: list[list[bytes]]) -> float:
    """Seconds per response, one connection reading the responses one after another (as keep-alive does)."""
    conn = _wire.Connection()
    events = 0
    start = time.perf_counter()
    for pieces in feeds:
        conn._reset(sse=True)
        for piece in pieces:
            conn.data_received(piece)
            while conn._events:
                conn._events.popleft()
                events += 1
    elapsed = time.perf_counter() - start
    if events != 42 * len(feeds):
        raise RuntimeError(f"{events} events, expected {42 * len(feeds)}")
    return elapsed / len(feeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--responses", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    paced = [_response(k) for k in range(args.responses)]
    out: dict[str, float] = {}
    for mode, feeds in (("paced", paced), ("burst", [[b"".join(r)] for r in paced])):
        times = [_time(feeds) * 1e6 for _ in range(args.repeats)]
        out[f"{mode}_us_per_response_p50"] = round(statistics.median(times), 1)
        out[f"{mode}_us_per_response_min"] = round(min(times), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
