"""`import llm_cascade` with the price table loaded: how long it takes, and that it opens no network connection.

Each run is a fresh interpreter (nothing cached in sys.modules). An audit hook installed before the import records
every socket event (connect, DNS lookups, ...); a price map downloaded at import would show up there. Figures are
printed per run, then a summary; the last line is JSON.

    .venv/bin/python benchmarks/import_time.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

LIMIT_S = 0.3

CHILD = r"""
import json, sys, time
events = []
def hook(event, args):
    if event.startswith("socket.") or event in ("urllib.Request", "http.client.connect"):
        events.append(event)
sys.addaudithook(hook)
t0 = time.perf_counter()
import llm_cascade
t1 = time.perf_counter()
table = llm_cascade.PriceTable.default()
cost = table.cost("openai:gpt-4o", llm_cascade.Usage(128, 1))
t2 = time.perf_counter()
heavy = sorted(m for m in ("litellm", "openai", "anthropic", "tiktoken", "sqlalchemy", "torch") if m in sys.modules)
print(json.dumps({"import_s": t1 - t0, "prices_s": t2 - t1, "total_s": t2 - t0, "models": len(table),
                  "network_events": events, "heavy_modules": heavy, "cost": str(cost)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append(r)
        print(
            f"run {i + 1:2d}: import {r['import_s'] * 1000:6.1f} ms, prices {r['prices_s'] * 1000:5.1f} ms,"
            f" total {r['total_s'] * 1000:6.1f} ms, network events {len(r['network_events'])}"
        )
    totals = [r["total_s"] for r in runs]
    network = sorted({e for r in runs for e in r["network_events"]})
    heavy = sorted({m for r in runs for m in r["heavy_modules"]})
    median = statistics.median(totals)
    print(f"median {median * 1000:.1f} ms, min {min(totals) * 1000:.1f} ms, max {max(totals) * 1000:.1f} ms")
    print(f"price table: {runs[0]['models']} models; gpt-4o, 128 in / 1 out: {runs[0]['cost']} USD")
    print(f"network events: {network or 'none'}; heavy modules imported: {heavy or 'none'}")
    ok = median < LIMIT_S and not network and not heavy
    print(
        json.dumps(
            {
                "benchmark": "import_time",
                "runs": len(runs),
                "median_s": round(median, 4),
                "min_s": round(min(totals), 4),
                "max_s": round(max(totals), 4),
                "limit_s": LIMIT_S,
                "network_events": len(network),
                "heavy_modules": heavy,
                "ok": ok,
            }
        )
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
