"""Reading a ledger's shadowed requests into calibration input: row by row (``read_observations`` -> ``ledger_runs``
-> ``RunMatrix.from_records``) against aggregated in the database (``ledger_columns.read_ledger_matrix``).

    python benchmarks/ledger_calibrate.py [--requests 20000 100000] [--models 8] [--postgres]
        [--workdir /tmp/ledger_calibrate] [--max-rss-gb 6] [--max-seconds 600] [--rounds 1] [--only old|new]

Each size's ledger is written once through ``Ledger.record`` (the rows a shadowed request leaves, seeded): answers
that agree with the reference more for dearer models, confidences, token counts and prices that vary per call,
~5% of calls retried once after an error, ~2% that only failed, ~1% unpriced, a pool model observed on only some
requests, cascade rows that are no observation, and timestamps with ties. Each reader runs in its own subprocess
(old, new, alternating, ``--rounds`` times) so the peak RSS reported is its own; both must give the same matrix
(compared by a digest of its arrays). ``--postgres``: the ledger is a table on a throwaway PostgreSQL server (the
tests' ``pg_server``), written afresh each run; else a SQLite file per size in ``--workdir``, written once. The last
line is JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

LETTERS = "ABCDEFGHIJ"


def populate(url: str, requests: int, k: int, seed: int = 0, unpriced: float = 0.01) -> dict[str, Any]:
    """Write ``requests`` shadowed requests over ``k`` models (plus the reference, and a rare model) to the ledger;
    ``unpriced``: the share of calls with no price (a model with one cannot be calibrated, but is read)."""
    from llm_cascade.core.types import Call, Usage
    from llm_cascade.spend.ledger import Ledger, Observed

    rng = np.random.default_rng(seed)
    ref = "bench:ref"
    pool = [ref, *(f"bench:m{j:02d}" for j in range(k)), "bench:rare"]
    skill = np.concatenate([[0.97], np.linspace(0.55, 0.9, k), [0.6]])
    seen = np.concatenate([[1.0], np.full(k, 0.98), [0.2]])  # most models on nearly every request; one on few
    price = np.concatenate([[5.0], 0.05 * 60.0 ** (np.arange(k) / max(k - 1, 1)), [0.3]])  # $ per 1M tokens
    now = [1.7e9]
    ledger = Ledger(url, journal=False, clock=lambda: now[0], max_backlog=10**7)
    rows = 0
    try:
        ts = 1.7e9 + np.cumsum(rng.choice([0.0, 0.001, 0.37, 2.5], size=requests, p=[0.1, 0.3, 0.4, 0.2]))
        ids = [f"{v:016x}" for v in rng.integers(0, 2**62, size=requests).tolist()]  # id order is not time order
        gold = rng.integers(0, len(LETTERS), size=requests)
        for i in range(requests):
            tags = {"shadow": "1", "reference": ref, "example": f"q{i}", "route": ("a", "b", "c")[i % 3]}
            digest = hashlib.sha256(ids[i].encode()).hexdigest()[:32]
            observed = Observed(digest, prompt=f"question {i}: which letter?", store_text=True, shadow=True)
            n_in = int(rng.integers(40, 900))
            if i % 7 == 0:  # the cascade's own call: not an observation (no digest)
                now[0] = float(ts[i])
                cascade = Call("bench:m00", 0, "ok", Usage(n_in, 1), answer="A", cost_usd=Decimal("0.00001"))
                ledger.record(ids[i], [cascade], {"route": tags["route"]})
                rows += 1
            for j, m in enumerate(pool):
                if rng.random() > seen[j]:
                    continue
                right = rng.random() < skill[j]
                answer = LETTERS[gold[i]] if right else LETTERS[int(rng.integers(0, len(LETTERS)))]
                n_out = int(rng.integers(1, 12))
                cost = (
                    None
                    if rng.random() < unpriced
                    else Decimal(n_in * int(price[j] * 1000) + n_out * 4) / Decimal(10**9)
                )
                conf = None if rng.random() < 0.05 else round(float(rng.beta(5, 2) if right else rng.beta(2, 3)), 4)
                calls = []
                fate = rng.random()
                if fate < 0.07:  # a failed first try, then (mostly) an answer
                    calls.append(Call(m, -1, "error", Usage(n_in, 0), cost_usd=cost, error="timeout", attempt=1))
                if fate >= 0.02:
                    calls.append(
                        Call(m, -1, "ok", Usage(n_in, n_out), answer=answer, confidence=conf, cost_usd=cost,
                             attempt=len(calls) + 1)
                    )  # fmt: skip
                now[0] = float(ts[i]) + float(rng.choice([0.0, 0.002, 0.05]))
                ledger.record(ids[i], calls, tags, observed=observed)
                rows += len(calls)
            if i % 20000 == 19999:
                ledger.flush()
        ledger.flush()
    finally:
        ledger.close()
    return {"requests": requests, "models": len(pool), "rows": rows}


def digest(matrix: Any) -> str:
    """One hash of everything calibration reads of a matrix."""
    h = hashlib.sha256()
    h.update(json.dumps([matrix.ids, matrix.models, matrix.vocab]).encode())
    for name in ("answers", "present", "correct", "correct_known", "cost", "confidence", "gold"):
        h.update(np.ascontiguousarray(getattr(matrix, name)).tobytes())
    return h.hexdigest()[:16]


def child(mode: str, url: str) -> int:
    """One reading in its own process; prints one JSON line."""
    t0 = time.perf_counter()
    if mode == "old":
        from llm_cascade.evals.from_ledger import ledger_runs, read_observations
        from llm_cascade.evals.records import RunMatrix

        runs = ledger_runs(read_observations(url), "bench:ref")
        matrix = RunMatrix.from_records(runs.records, runs.models)
    else:
        from llm_cascade.evals.ledger_columns import read_ledger_matrix

        matrix = read_ledger_matrix(url, "bench:ref").matrix
    seconds = time.perf_counter() - t0
    print(json.dumps({"read_s": round(seconds, 2), "n": matrix.n, "k": len(matrix.models), "digest": digest(matrix)}))
    return 0


def measure(mode: str, url: str, max_rss_gb: float, max_seconds: float) -> dict[str, Any]:
    from _child import run_child  # benchmarks/: on the path when this file runs as a script

    return {"mode": mode, **run_child([sys.executable, __file__, "--child", mode, url], max_rss_gb, max_seconds)}


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", nargs="+", type=int, default=[20000, 100000])
    parser.add_argument("--models", type=int, default=8, help="pool models besides the reference and a rare one")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL server (tests/pg_server.py)")
    parser.add_argument("--workdir", default="/tmp/ledger_calibrate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", choices=("old", "new"), default=None)
    parser.add_argument("--max-rss-gb", type=float, default=6.0)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    server: Any = None
    if args.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from pg_server import throwaway_postgres

        server = throwaway_postgres()
        base_url = str(server.__enter__())
    try:
        for n in args.requests:
            if server is not None:  # a table per size, in a database of its own
                url = _pg_database(base_url, f"bench_{n}x{args.models}")
                t0 = time.perf_counter()
                info = populate(url, n, args.models, args.seed)
                print(f"wrote {info} to PostgreSQL in {time.perf_counter() - t0:.0f} s", flush=True)
            else:
                url = str(Path(args.workdir) / f"ledger_{n}x{args.models}_s{args.seed}.sqlite3")
                if not Path(url).exists():
                    Path(args.workdir).mkdir(parents=True, exist_ok=True)
                    t0 = time.perf_counter()
                    info = populate(url + ".part", n, args.models, args.seed)
                    Path(url + ".part").rename(url)
                    print(f"wrote {url}: {info} in {time.perf_counter() - t0:.0f} s", flush=True)
            results[str(n)] = _compare(url, n, args)
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    print(json.dumps(results))
    return 0


def _pg_database(url: str, name: str) -> str:
    """A fresh database ``name`` on the server of ``url``; its URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


def _compare(url: str, n: int, args: Any) -> dict[str, Any]:
    runs = []
    for _ in range(args.rounds):
        for mode in ("old", "new"):
            if args.only in (None, mode):
                res = measure(mode, url, args.max_rss_gb, args.max_seconds)
                runs.append(res)
                print(f"{n} requests x {args.models + 2} models, {mode}: {json.dumps(res)}", flush=True)
    digests = {r["digest"] for r in runs if r.get("status") == "ok"}
    return {"runs": runs, "same_matrix": len(digests) == 1 if digests else None}


if __name__ == "__main__":
    sys.exit(main())
