"""Calibration at traffic scale: seconds and peak memory of ``calibrate`` on seeded synthetic recorded runs.

    python benchmarks/calibrate_scale.py [--sizes 100000x9 100000x20 1000000x20] [--test 200000]
        [--format parquet|jsonl] [--workdir /tmp/calibrate_scale] [--max-rss-gb 6] [--max-seconds 300]

The runs are written in the native recorded-run format (JSONL, or its Parquet form when pyarrow is installed and
``--format parquet``): correctness correlated through a per-example difficulty, prices spanning 100x (dearer models
are better, with noise), confidences that say something about correctness, wrong answers that share a distractor,
so that a real cascade is hidden in them. Each size is calibrated in its own subprocess (calibration rows, then the
test rows scored with the chosen configuration), so the peak RSS reported is that run's own (``os.wait4``); a run
over ``--max-rss-gb`` or ``--max-seconds`` is stopped and reported as such. The last line is JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

LETTERS = ("A", "B", "C", "D")


def generate(n: int, k: int, seed: int) -> dict[str, Any]:
    """Column arrays of ``n`` examples x ``k`` models (seeded): see the module doc for what is in them."""
    rng = np.random.default_rng(seed)
    price = 0.1 * 100.0 ** (np.arange(k) / max(k - 1, 1))  # $ per 1M input tokens, 100x from cheapest to dearest
    skill = np.linspace(-0.2, 1.6, k) + rng.normal(0.0, 0.2, k)
    difficulty = rng.normal(0.0, 1.2, n)
    z = skill[None, :] - difficulty[:, None] + rng.normal(0.0, 0.9, (n, k))
    correct = z > 0
    noisy = 1.4 * z + rng.normal(0.0, 1.0, (n, k))
    conf = np.round(1.0 / (1.0 + np.exp(-noisy)), 4)
    gold = rng.integers(0, 4, n)
    distractor = (gold + rng.integers(1, 4, n)) % 4
    other = (gold[:, None] + rng.integers(1, 4, (n, k))) % 4
    wrong = np.where(rng.random((n, k)) < 0.6, distractor[:, None], other)
    answer = np.where(correct, gold[:, None], wrong)
    tokens_in = rng.integers(150, 900, n)
    tokens_out = rng.integers(1, 12, (n, k))
    cost = (tokens_in[:, None] * price[None, :] + tokens_out * 4.0 * price[None, :]) / 1e6
    names = [f"model-{j:02d}" for j in range(k)]
    return {
        "names": names,
        "gold": gold,
        "answer": answer,
        "correct": correct,
        "conf": conf,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "cost": cost,
    }


def write_jsonl(cols: dict[str, Any], path: Path, start: int = 0) -> None:
    names = cols["names"]
    answer = cols["answer"].tolist()
    correct = cols["correct"].tolist()
    conf = cols["conf"].tolist()
    cost = cols["cost"].tolist()
    tin = cols["tokens_in"].tolist()
    tout = cols["tokens_out"].tolist()
    gold = cols["gold"].tolist()
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as fh:
        for i in range(len(gold)):
            models = {
                m: {
                    "answer": LETTERS[answer[i][j]],
                    "correct": correct[i][j],
                    "tokens_in": tin[i],
                    "tokens_out": tout[i][j],
                    "cost_usd": cost[i][j],
                    "confidence": conf[i][j],
                }
                for j, m in enumerate(names)
            }
            rec = {"id": str(start + i), "prompt": f"q{start + i}", "gold": LETTERS[gold[i]], "models": models}
            fh.write(json.dumps(rec) + "\n")


def write_parquet(cols: dict[str, Any], path: Path, start: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    letters = np.asarray(LETTERS)
    n = len(cols["gold"])
    fields = []
    arrays = []
    for j, m in enumerate(cols["names"]):
        arrays.append(
            pa.StructArray.from_arrays(
                [
                    pa.array(letters[cols["answer"][:, j]]),
                    pa.array(cols["correct"][:, j]),
                    pa.array(cols["tokens_in"].astype(np.int64)),
                    pa.array(cols["tokens_out"][:, j].astype(np.int64)),
                    pa.array(cols["cost"][:, j]),
                    pa.array(cols["conf"][:, j]),
                ],
                ["answer", "correct", "tokens_in", "tokens_out", "cost_usd", "confidence"],
            )
        )
        fields.append(m)
    models = pa.StructArray.from_arrays(arrays, fields)
    ids = pa.array(np.arange(start, start + n).astype(str))
    table = pa.table({"id": ids, "gold": pa.array(letters[cols["gold"]]), "models": models})
    pq.write_table(table, path, row_group_size=65536)


def dataset(n: int, k: int, test: int, fmt: str, workdir: Path, seed: int) -> tuple[Path, Path]:
    """The calibration and test files of one size (written once, reused)."""
    ext = "parquet" if fmt == "parquet" else "jsonl.gz"
    cal_path = workdir / f"cal_{n}x{k}_s{seed}.{ext}"
    test_path = workdir / f"test_{n}x{k}_{test}_s{seed}.{ext}"
    if not (cal_path.exists() and test_path.exists()):
        workdir.mkdir(parents=True, exist_ok=True)
        cols = generate(n + test, k, seed)
        cal = {key: (v[:n] if isinstance(v, np.ndarray) else v) for key, v in cols.items()}
        tst = {key: (v[n:] if isinstance(v, np.ndarray) else v) for key, v in cols.items()}
        write = write_parquet if fmt == "parquet" else write_jsonl
        write(cal, cal_path.with_suffix(".tmp"), 0)
        write(tst, test_path.with_suffix(".tmp"), n)
        cal_path.with_suffix(".tmp").rename(cal_path)
        test_path.with_suffix(".tmp").rename(test_path)
    return cal_path, test_path


def _load(path: Path, models: Any = None) -> Any:
    from llm_cascade.evals.records import RunMatrix

    if path.name.endswith(".parquet"):
        from llm_cascade.evals.columnar import read_matrix

        return read_matrix(path, models)
    from llm_cascade.evals.records import load_records

    return RunMatrix.from_records(load_records(path), models)


def child(cal_path: Path, test_path: Path) -> int:
    """One run, in its own process: load, calibrate, score the test rows. Prints one JSON line."""
    from llm_cascade.evals.calibrate import calibrate
    from llm_cascade.evals.simulate import Simulator

    t0 = time.perf_counter()
    cal = _load(cal_path)
    t1, c1 = time.perf_counter(), time.process_time()
    chosen = calibrate(cal)
    t2, c2 = time.perf_counter(), time.process_time()
    test = _load(test_path, cal.models)
    res = Simulator(test).run(chosen.config)
    t3 = time.perf_counter()
    out = {
        "load_s": round(t1 - t0, 2),
        "calibrate_s": round(t2 - t1, 2),
        "test_s": round(t3 - t2, 2),
        "verdict": chosen.verdict,
        "config": chosen.config.describe(),
        "accuracy": chosen.accuracy,
        "cost": chosen.cost_per_request,
        "best_single": chosen.best_single,
        "evaluated": chosen.evaluated,
        "screened": chosen.screened,
        "calibrate_cpu_s": round(c2 - c1, 2),
        "test_accuracy": res.accuracy,
        "test_cost": res.cost_per_request,
    }
    print(json.dumps(out), flush=True)
    return 0


def measure(cal_path: Path, test_path: Path, max_rss_gb: float, max_seconds: float) -> dict[str, Any]:
    """Run :func:`child` in a subprocess; wall seconds, its own peak RSS, and its JSON (or why it was stopped)."""
    from _child import run_child  # benchmarks/: on the path when this file runs as a script

    cmd = [sys.executable, __file__, "--child", str(cal_path), str(test_path)]
    return run_child(cmd, max_rss_gb, max_seconds, poll_s=0.2, digits=1)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child(Path(sys.argv[2]), Path(sys.argv[3]))
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["100000x9", "100000x20", "1000000x20"])
    parser.add_argument("--test", type=int, default=None, help="test rows (default: a fifth of the calibration rows)")
    parser.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    parser.add_argument("--workdir", default="/tmp/calibrate_scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-gb", type=float, default=6.0)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    results = {}
    for size in args.sizes:
        n, k = (int(x) for x in size.lower().split("x"))
        test = args.test if args.test is not None else n // 5
        cal_path, test_path = dataset(n, k, test, args.format, Path(args.workdir), args.seed)
        res = measure(cal_path, test_path, args.max_rss_gb, args.max_seconds)
        res["test_rows"] = test
        results[size] = res
        print(f"{size} (+{test} test): {json.dumps(res)}", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
