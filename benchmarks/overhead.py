"""What the router costs on top of the models it calls.

(a) The router's own cost per request, with FakeBackend members that answer at once (so what is timed is the router:
    request building, task fan-out, normalisation, the rule, the RouteResult), in three shapes: one member, a
    two-member tier that agrees, and a two-tier escalation (two members disagree, a third answers); then the
    two-member tier and the one member with the whole spend path around them (a price table, the SQLite ledger with
    its writer thread and journal, a per-day budget, the retry layer). All five are timed in interleaved blocks of
    100 requests, in a new random order each round, so that a shared machine's changes of speed hit them alike.
(b) The latency added over a direct ``AsyncOpenAI`` call against the local recorded-answer server (in its own
    process), by our Router with one OpenAIBackend member (over the SDK, and over the lean HTTP transport), and by
    ``litellm.Router`` with one deployment, measured in the same run, interleaved call by call so machine noise hits
    all of them alike.
(c) The two OpenAI transports side by side (``benchmarks/lean_http.py``): client CPU per call, SDK vs lean
    (``sdk_cpu_us_per_call``, ``lean_cpu_us_per_call``), and routed calls/s on one core at 50 ms provider latency
    and 64 in flight (``lean_calls_per_s_c64``), client and stub server pinned to separate cores.

    python benchmarks/overhead.py [--n 3000] [--http-n 1500] [--lean-cpu-n 2000] [--lean-calls 6000]
    python benchmarks/overhead.py --layers   # (a) for the spend path one component at a time: p50 increments

The last line is JSON: overhead_us_p50/p99 (the two-member agreeing tier), the other shapes, overhead_full_us_p50/p99
(that tier with prices, the SQLite ledger, a budget and the retry layer), overhead_full_single_us_p50 (one member
with the same stack), spend_path_us_p50 (full minus bare, same run), and the added latency figures (median over
rounds of each client's time minus the direct call's, in microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from lean_http import measure as lean_measure
from lean_http import report as lean_report

from llm_cascade import Completion, FakeBackend, Request, Router, Tier, Usage, unanimous
from llm_cascade.backends.openai import OpenAIBackend

PROMPT = "Which letter comes second? A) a B) b C) c D) d"


class Prompts:
    """The prompts routed: distinct ones by default (each request a new text, so nothing keyed by the prompt, a
    token count or an estimate, is served from a cache the way one repeated prompt would be), or ``PROMPT`` alone
    (``fixed``, the figures of earlier rounds)."""

    def __init__(self, fixed: bool) -> None:
        self.fixed = fixed
        self.i = 0

    def __call__(self) -> str:
        if self.fixed:
            return PROMPT
        self.i += 1
        return f"{PROMPT} (question {self.i}: {'context ' * (self.i % 37)})"


class Varying(FakeBackend):
    """A FakeBackend whose usage changes from call to call (as a provider's does), unless ``fixed``: costs, rows and
    running totals are then computed for new numbers rather than read back from a cache."""

    def __init__(self, model: str, script: str, fixed: bool) -> None:
        super().__init__(model, script)
        self.rng = random.Random(model) if not fixed else None

    async def complete(self, request: Request) -> Completion:
        if self.rng is not None:
            self.usage = Usage(self.rng.randint(10, 4000), self.rng.randint(1, 300))
        self.requests.clear()  # a benchmark routes many thousands of requests: keep none of them
        return await super().complete(request)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def time_calls(fn: Callable[[], Awaitable[Any]], n: int, warmup: int = 200) -> list[float]:
    """Per-call wall time in microseconds, one call at a time."""
    for _ in range(warmup):
        await fn()
    out: list[float] = []
    gc.collect()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await fn()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def bare_routers(fixed: bool = False) -> dict[str, Router]:
    def fake(model: str, script: str) -> FakeBackend:
        return Varying(model, script, fixed)

    return {
        "single": Router([Tier([fake("a", "B")])], normalizer="choice"),
        "agree": Router([Tier([fake("a", "B"), fake("b", "B")], unanimous())], normalizer="choice"),
        "escalate": Router(
            [
                Tier([fake("a", "B"), fake("b", "C")], unanimous()),
                Tier([fake("c", "B")]),
            ],
            normalizer="choice",
        ),
    }


def full_stack_router(folder: str, members: int = 2, fixed: bool = False) -> Router:
    """The two-member agreeing tier again (or one member), with everything a production router has around it: a price
    table, the SQLite ledger (its writer thread and journal), a per-day budget (gating tier 0) and the retry layer."""
    from llm_cascade.resilience.limits import Resilience
    from llm_cascade.resilience.retry import RetryPolicy
    from llm_cascade.spend.budget import Budget, Limit
    from llm_cascade.spend.ledger import Ledger
    from llm_cascade.spend.pricing import PriceTable

    entry = {"input": "0.15", "output": "0.6", "source": "benchmark", "as_of": "2026-01"}
    prices = PriceTable({"a": entry, "b": entry}, fallback=None)
    ledger = Ledger(os.path.join(folder, f"ledger-{members}.sqlite3"))
    budget = Budget(Limit("1000000", per="day"), ledger=ledger, prices=prices)
    return Router(
        [Tier([Varying("a", "B", fixed), Varying("b", "B", fixed)][:members], unanimous())],
        normalizer="choice",
        prices=prices,
        ledger=ledger,
        budget=budget,
        resilience=Resilience(retry=RetryPolicy()),
    )


# The spend path one layer at a time (--layers): each shape adds one component to the one before it.
LAYERS: dict[str, tuple[str, ...]] = {
    "bare": (),
    "prices": ("prices",),
    "ledger": ("prices", "ledger"),
    "journal": ("prices", "ledger", "journal"),
    "budget": ("prices", "ledger", "journal", "budget"),
    "retry": ("prices", "ledger", "journal", "budget", "retry"),
}


def layered_router(folder: str, layers: tuple[str, ...], fixed: bool = False) -> Router:
    """The two-member agreeing tier with the given spend components: a price table, the SQLite ledger (its writer
    thread; with "journal" its crash journal too), a per-day budget, the retry layer (the bare router has the default
    retry policy around its members, as full_stack_router's Resilience does)."""
    from llm_cascade.resilience.limits import Resilience
    from llm_cascade.resilience.retry import RetryPolicy
    from llm_cascade.spend.budget import Budget, Limit
    from llm_cascade.spend.ledger import Ledger
    from llm_cascade.spend.pricing import PriceTable

    entry = {"input": "0.15", "output": "0.6", "source": "benchmark", "as_of": "2026-01"}
    prices = PriceTable({"a": entry, "b": entry}, fallback=None)
    kwargs: dict[str, Any] = {}
    if "prices" in layers:
        kwargs["prices"] = prices
    if "ledger" in layers:
        path = os.path.join(folder, f"ledger-{'-'.join(layers)}.sqlite3")
        kwargs["ledger"] = Ledger(path, journal=None if "journal" in layers else False)
    if "budget" in layers:
        kwargs["budget"] = Budget(Limit("1000000", per="day"), ledger=kwargs["ledger"], prices=prices)
    if "retry" in layers:
        kwargs["resilience"] = Resilience(retry=RetryPolicy())
    members = [Varying("a", "B", fixed), Varying("b", "B", fixed)]
    return Router([Tier(members, unanimous())], normalizer="choice", **kwargs)


async def interleaved(routers: dict[str, Router], prompt: Prompts, n: int, block: int) -> dict[str, list[float]]:
    """Per-request microseconds of each router, ``n`` requests each, timed in interleaved blocks of ``block`` (the
    routers in a new random order each round), so that a shared machine's changes of speed, which come and go over
    seconds, hit every router alike instead of whichever one happened to run then."""
    out: dict[str, list[float]] = {name: [] for name in routers}
    order = list(routers)
    rng = random.Random(0)
    gc.collect()
    for _ in range(-(-n // block)):
        rng.shuffle(order)
        for name in order:
            route, times = routers[name].route, out[name]
            for _ in range(block):
                text = prompt()
                t0 = time.perf_counter_ns()
                await route(text)
                times.append((time.perf_counter_ns() - t0) / 1000)
    return out


async def layer_cost(n: int, block: int = 100, fixed: bool = False) -> dict[str, list[float]]:
    """Per-request time of each LAYERS shape, measured by :func:`interleaved`."""
    with tempfile.TemporaryDirectory() as tmp:
        routers = {name: layered_router(tmp, layers, fixed) for name, layers in LAYERS.items()}
        prompt = Prompts(fixed)
        for router in routers.values():
            for _ in range(200):
                await router.route(prompt())
        out = await interleaved(routers, prompt, n, block)
        for router in routers.values():
            if router.ledger is not None:
                await router.ledger.aclose()  # type: ignore[attr-defined]
    return out


async def router_cost(n: int, block: int = 100, fixed: bool = False) -> dict[str, list[float]]:
    """Per-request time of every shape, bare and full-stack, measured by :func:`interleaved`."""
    with tempfile.TemporaryDirectory() as tmp:
        routers = {
            **bare_routers(fixed),
            "full": full_stack_router(tmp, 2, fixed),
            "full_single": full_stack_router(tmp, 1, fixed),
        }
        prompt = Prompts(fixed)
        for name, router in routers.items():
            result = await router.route(prompt())
            assert result.answer == "B" and result.tier == (1 if name == "escalate" else 0)
            assert name not in ("full", "full_single") or (result.cost_usd is not None and result.cost_usd > 0)
            for _ in range(200):
                await router.route(prompt())
        out = await interleaved(routers, prompt, n, block)
        for name, members in (("full", 2), ("full_single", 1)):
            ledger = routers[name].ledger
            await ledger.aflush()  # type: ignore[union-attr]
            # every call of every request is stored (1 check, 200 warm-up, the timed ones)
            assert ledger.count() == members * (len(out[name]) + 201)  # type: ignore[union-attr]
            await ledger.aclose()  # type: ignore[union-attr]
    return out


def start_server() -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "llm_cascade.testing.server", "--default", "B", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().split()[-1]
    return proc, url


async def added_latency(base_url: str, n: int) -> dict[str, list[float]]:
    from openai import AsyncOpenAI

    from llm_cascade.backends.litellm import import_litellm

    litellm = import_litellm()
    messages = [{"role": "user", "content": PROMPT}]
    direct = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
    backend = OpenAIBackend("m", base_url=base_url, api_key="unused", timeout=30)
    ours = Router([Tier([backend])], normalizer="choice")
    lean_backend = OpenAIBackend("m", base_url=base_url, api_key="unused", timeout=30, transport="http")
    lean = Router([Tier([lean_backend])], normalizer="choice")
    theirs = litellm.Router(
        model_list=[{"model_name": "m", "litellm_params": {"model": "openai/m", "api_base": base_url, "api_key": "x"}}],
        num_retries=0,
    )

    async def call_direct() -> Any:
        return await direct.chat.completions.create(model="m", messages=messages, temperature=0.0)  # type: ignore[arg-type]

    async def call_ours() -> Any:
        return await ours.route(PROMPT)

    async def call_litellm() -> Any:
        return await theirs.acompletion(model="m", messages=messages, temperature=0.0)

    async def call_lean() -> Any:
        return await lean.route(PROMPT)

    clients: dict[str, Callable[[], Awaitable[Any]]] = {
        "direct": call_direct,
        "router": call_ours,
        "lean": call_lean,
        "litellm": call_litellm,
    }
    assert (await call_ours()).answer == "B"
    assert (await call_lean()).answer == "B"
    assert (await call_litellm()).choices[0].message.content == "B"
    out: dict[str, list[float]] = {k: [] for k in clients}
    for _ in range(200):
        for fn in clients.values():
            await fn()
    gc.collect()
    rng = random.Random(0)
    order = list(clients)
    for _ in range(n):
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter_ns()
            await clients[name]()
            out[name].append((time.perf_counter_ns() - t0) / 1000)
    await direct.close()
    await backend.aclose()
    await lean_backend.aclose()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="routed requests per router shape")
    parser.add_argument("--http-n", type=int, default=1500, help="HTTP calls per client")
    parser.add_argument("--lean-cpu-n", type=int, default=2000, help="(c) sequential calls per transport")
    parser.add_argument("--lean-calls", type=int, default=6000, help="(c) routed calls per transport at c=64")
    parser.add_argument(
        "--fixed", action="store_true", help="(a) one repeated prompt and fixed usage (earlier rounds' figures)"
    )
    parser.add_argument("--router-only", action="store_true", help="(a) alone: no HTTP client, no transports")
    parser.add_argument(
        "--layers", action="store_true", help="the spend path one component at a time (p50 increments), alone"
    )
    args = parser.parse_args(argv)

    if args.layers:
        layered = asyncio.run(layer_cost(args.n, fixed=args.fixed))
        p50 = {name: pct(values, 0.5) for name, values in layered.items()}
        names = list(p50)
        steps = {"bare_us_p50": round(p50["bare"], 1)}
        for before, name in itertools.pairwise(names):
            steps[f"{name}_us"] = round(p50[name] - p50[before], 1)
        steps["spend_path_us_p50"] = round(p50[names[-1]] - p50["bare"], 1)
        print(f"(a') the spend path one layer at a time, {args.n} requests each, interleaved (p50 increments, µs)")
        print(json.dumps(steps))
        return steps

    cost = asyncio.run(router_cost(args.n, fixed=args.fixed))
    kind = "one repeated prompt, fixed usage" if args.fixed else "a new prompt per request, varying usage"
    print(f"(a) router's own cost per request, FakeBackend members ({kind}), {args.n} requests each, interleaved")
    print(f"    {'shape':<42}{'p50 µs':>9}{'p99 µs':>9}")
    labels = {
        "single": "1 member",
        "agree": "2 members agreeing",
        "escalate": "2 disagreeing -> tier 2 (3 calls)",
        "full": "2 agreeing + prices/ledger/budget/retry",
        "full_single": "1 member + prices/ledger/budget/retry",
    }
    for name, values in cost.items():
        print(f"    {labels[name]:<42}{pct(values, 0.5):>9.1f}{pct(values, 0.99):>9.1f}")
    full, full_single = cost["full"], cost["full_single"]
    spend_path = pct(full, 0.5) - pct(cost["agree"], 0.5)
    print(f"    the spend path (prices, ledger, budget, retry) adds {spend_path:.1f} µs p50 to the 2-member tier")
    if args.router_only:
        figures = {
            "prompts": "fixed" if args.fixed else "distinct",
            "overhead_us_p50": round(pct(cost["agree"], 0.5), 1),
            "overhead_full_us_p50": round(pct(full, 0.5), 1),
            "overhead_full_single_us_p50": round(pct(full_single, 0.5), 1),
            "spend_path_us_p50": round(spend_path, 1),
            "single_us_p50": round(pct(cost["single"], 0.5), 1),
            "spend_path_single_us_p50": round(pct(full_single, 0.5) - pct(cost["single"], 0.5), 1),
        }
        print(json.dumps(figures))
        return figures

    proc, url = start_server()
    try:
        lat = asyncio.run(added_latency(url + "/v1", args.http_n))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    p50 = {k: statistics.median(v) for k, v in lat.items()}
    p99 = {k: pct(v, 0.99) for k, v in lat.items()}
    # Added latency: the median of per-round differences (each round calls all three clients back to back, in random
    # order), which cancels the slow drifts of a shared machine better than a difference of two medians.
    added = {k: statistics.median(a - d for a, d in zip(v, lat["direct"], strict=True)) for k, v in lat.items()}
    ours_added, theirs_added = added["router"], added["litellm"]
    print(f"(b) latency over HTTP to the local server, {args.http_n} calls each, interleaved")
    print(f"    {'client':<34}{'p50 µs':>9}{'p99 µs':>9}{'added p50 µs':>14}")
    names = {
        "direct": "AsyncOpenAI direct",
        "router": "llm_cascade Router (1 member)",
        "lean": "  the same, transport='http'",
        "litellm": "litellm.Router",
    }
    for k in lat:
        print(f"    {names[k]:<34}{p50[k]:>9.0f}{p99[k]:>9.0f}{added[k]:>14.0f}")
    ratio = theirs_added / ours_added if ours_added > 0 else float("inf")
    print(f"    litellm.Router adds {ratio:.1f}x the latency our Router adds" if ours_added > 0 else "")
    lean_figures = lean_measure(args.lean_cpu_n, args.lean_calls)
    lean_report(lean_figures)
    summary = {
        "overhead_us_p50": round(pct(cost["agree"], 0.5), 1),
        "overhead_us_p99": round(pct(cost["agree"], 0.99), 1),
        "overhead_full_us_p50": round(pct(full, 0.5), 1),
        "overhead_full_us_p99": round(pct(full, 0.99), 1),
        "overhead_full_single_us_p50": round(pct(full_single, 0.5), 1),
        "spend_path_us_p50": round(spend_path, 1),
        "single_us_p50": round(pct(cost["single"], 0.5), 1),
        "escalation_us_p50": round(pct(cost["escalate"], 0.5), 1),
        "escalation_us_p99": round(pct(cost["escalate"], 0.99), 1),
        "direct_us_p50": round(p50["direct"]),
        "router_added_us_p50": round(ours_added),
        "litellm_added_us_p50": round(theirs_added),
        "added_latency_ratio": round(ratio, 1) if ratio != float("inf") else None,
        "lean_router_added_us_p50": round(added["lean"]),
        **lean_figures,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
