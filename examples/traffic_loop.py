"""The traffic loop end to end, from a fresh clone, with no key and no network:

1. start with the reference model alone and ``[shadow] rate = 1.0`` (every other model answers in the background);
2. serve the first part of a recorded task through it (``llm-cascade eval --replay --rows 0:N --ledger``);
3. ``llm-cascade calibrate --from-ledger --reference`` lists the requests worth labelling, joins their labels and
   ``--emit``s a cascade (with its prices, normalizer and a ``[shadow]`` section);
4. ``llm-cascade serve`` (started on the reference alone) reloads it on SIGHUP;
5. the rest of the task is served by the new cascade through the proxy;
6. ``llm-cascade audit --from-ledger`` reports fidelity to the reference, cost per request and shadow spend.

    python examples/traffic_loop.py [--out build/traffic] [--first 400]

The task is synthetic (written into the output folder, so the demo needs no data set): a costly reference model and
two cheap ones that agree with it when they are sure, as cheap models tend to. Every step is a real command, the
proxy a real process; the numbers printed at the end are measured, not assumed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "llm_cascade.serve.cli"]
MODELS = {"big": (5.0, 5.0), "small": (0.25, 0.25), "medium": (1.0, 1.0)}  # USD per 1M input, output tokens
REFERENCE = "big"


def write_task(folder: Path, n: int = 600, seed: int = 7) -> Path:
    """A recorded-run file (our format) and its task spec; returns the spec's path."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        gold = rng.choice("ABCD")
        big = gold if rng.random() < 0.9 else rng.choice([x for x in "ABCD" if x != gold])
        models: dict[str, Any] = {"big": {"answer": big, "tokens_in": 200, "tokens_out": 1, "confidence": 0.9}}
        for name, sure in (("small", 0.7), ("medium", 0.85)):
            if rng.random() < sure:
                models[name] = {"answer": big, "confidence": 0.97}
            else:
                models[name] = {"answer": rng.choice("ABCD"), "confidence": 0.35}
            models[name].update(tokens_in=200, tokens_out=1)
        for name, run in models.items():
            cin, cout = MODELS[name]
            run["cost_usd"] = (run["tokens_in"] * cin + run["tokens_out"] * cout) / 1e6
        rows.append({"id": f"ex{i}", "prompt": f"Question {i}: pick A, B, C or D.", "gold": gold, "models": models})
    data = folder / "task.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = folder / "task.toml"
    spec.write_text(
        f'name = "synthetic"\n[data]\nformat = "records"\npath = {json.dumps(str(data.resolve()))}\n'
        '[answer]\ngold_field = "gold"\nnormalizer = "choice"\nchoices = 4\n',
        encoding="utf-8",
    )
    return spec


def prices_section() -> str:
    lines = ["[prices]", 'path = "default"']
    for name, (cin, cout) in MODELS.items():
        lines += [
            f'[prices.overrides."recorded:{name}"]',
            f"input = {cin}",
            f"output = {cout}",
            'source = "demo"',
            'as_of = "2026-01-01"',
        ]
    return "\n".join(lines) + "\n"


def start_config(ledger: Path, port: int) -> str:
    """The reference alone, every model shadowed; the proxy's ledger and an admin key."""
    pool = ", ".join(f'"recorded:{m}"' for m in MODELS)
    return (
        '[providers.recorded]\ntype = "openai"\nbase_url = "${RECORDED_BASE_URL:-http://127.0.0.1:8001/v1}"\n'
        'api_key_env = "RECORDED_API_KEY"\n\n'
        f'[cascades.start]\nnormalizer = "choice"\n[[cascades.start.tiers]]\nmembers = ["recorded:{REFERENCE}"]\n\n'
        f"[shadow]\nrate = 1.0\npool = [{pool}]\n\n" + prices_section() + "\n" + serving(ledger, port)
    )


def serving(ledger: Path, port: int) -> str:
    return (
        f"[ledger]\nurl = {json.dumps(str(ledger))}\n\n[server]\nport = {port}\n"
        '[[server.keys]]\nname = "ops"\nenv = "DEMO_ADMIN_KEY"\nadmin = true\n'
    )


def cli(*args: str, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode not in ok:
        raise SystemExit(f"llm-cascade {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, deadline_s: float = 60.0, **kwargs: Any) -> Any:
    import httpx

    end = time.monotonic() + deadline_s
    while True:
        try:
            return httpx.get(url, timeout=2.0, **kwargs)
        except httpx.HTTPError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def run(out: Path, first: int = 400) -> dict[str, Any]:
    """The whole loop; returns the figures it measured."""
    import httpx

    from llm_cascade.evals.records import load_records
    from llm_cascade.evals.runner import replay_server
    from llm_cascade.evals.tasks import load_examples, load_task

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("ledger.sqlite3*"):
        old.unlink()
    spec_path = write_task(out)
    ledger = (out / "ledger.sqlite3").resolve()
    port = free_port()
    served = out / "served.toml"
    served.write_text(start_config(ledger, port), encoding="utf-8")
    env = {**os.environ, "DEMO_ADMIN_KEY": "demo-admin-key", "RECORDED_API_KEY": "unused"}

    # 2. the first part, through the reference alone with every model shadowed
    cli(
        "eval",
        str(spec_path),
        "--cascade",
        str(served),
        "--replay",
        "--rows",
        f"0:{first}",
        "--ledger",
        str(ledger),
        "--out",
        str(out / "eval_first"),
        env=env,
    )
    # 3. labels where they matter, then the calibration
    cli(
        "calibrate",
        "--from-ledger",
        str(ledger),
        "--reference",
        REFERENCE,
        "--suggest-labels",
        "60",
        "--out",
        str(out / "ask.jsonl"),
        env=env,
    )
    gold = {r.id: r.gold for r in load_records(out / "task.jsonl")}
    asked = [json.loads(line) for line in (out / "ask.jsonl").read_text().splitlines()]
    (out / "gold.jsonl").write_text(
        "".join(json.dumps({"example": a["example"], "gold": gold[a["example"]]}) + "\n" for a in asked)
    )
    cli(
        "calibrate",
        "--from-ledger",
        str(ledger),
        "--reference",
        REFERENCE,
        "--gold",
        str(out / "gold.jsonl"),
        "--normalizer",
        "choice",
        "--margin",
        "0.01",
        "--emit",
        str(out / "calibrated.toml"),
        "--emit-name",
        "start",
        "--shadow-rate",
        "1.0",
        "--json",
        str(out / "calibration.json"),
        env=env,
    )
    calibration = json.loads((out / "calibration.json").read_text())

    # 4-5. the proxy starts on the reference alone, reloads the calibrated cascade on SIGHUP, serves the rest
    spec = load_task(spec_path)
    examples = load_examples(spec)
    with replay_server(spec, [e.record for e in examples if e.record is not None]) as server:
        env["RECORDED_BASE_URL"] = server.base_url
        proxy = subprocess.Popen(
            [*CLI, "serve", "--config", str(served), "--no-check"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/health")
            headers = {"authorization": "Bearer demo-admin-key"}

            def ask(prompt: str) -> httpx.Response:
                body = {"model": "start", "messages": [{"role": "user", "content": prompt}]}
                return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30)

            before = ask(examples[first].prompt).headers["x-llm-cascade-models"]
            served.write_text((out / "calibrated.toml").read_text() + "\n" + serving(ledger, port), encoding="utf-8")
            proxy.send_signal(signal.SIGHUP)
            end = time.monotonic() + 30
            while ask(examples[first].prompt).headers["x-llm-cascade-models"] == before and time.monotonic() < end:
                time.sleep(0.2)
            right = cost = 0.0
            rest = examples[first:]
            for ex in rest:
                reply = ask(ex.prompt).json()
                right += reply["choices"][0]["message"]["content"].strip() == ex.gold
                cost += reply["llm_cascade"]["cost_usd"] or math.nan
        finally:
            proxy.send_signal(signal.SIGINT)
            proxy.wait(timeout=30)
    # 6. the audit of what was served
    audited = cli(
        "audit",  # the reference is the one the ledger records (the start config's only member)
        "--from-ledger",
        str(ledger),
        "--min-fidelity",
        "0.9",
        "--json",
        str(out / "audit.json"),
        env=env,
        ok=(0, 1),
    )
    audit = json.loads((out / "audit.json").read_text())
    reference_acc = sum(ex.record.models[REFERENCE].answer == ex.gold for ex in rest if ex.record) / len(rest)
    reference_cost = sum(ex.record.models[REFERENCE].cost_usd or 0 for ex in rest if ex.record) / len(rest)
    return {
        "calibration": {k: calibration.get(k) for k in ("verdict", "chosen", "accuracy_means", "reason")},
        "before_reload": before,
        "rest": {
            "n": len(rest),
            "accuracy": right / len(rest),
            "cost_per_request_usd": cost / len(rest),
            "reference_accuracy": reference_acc,
            "reference_cost_per_request_usd": reference_cost,
        },
        "audit": audit["total"],
        "audit_reference": audit["reference"],
        "audit_exit": audited.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/traffic"))
    parser.add_argument("--first", type=int, default=400)
    args = parser.parse_args()
    result = run(args.out, args.first)
    rest = result["rest"]
    print(f"calibration: {result['calibration']['verdict']}: {result['calibration']['chosen']}")
    print(f"  accuracy means: {result['calibration']['accuracy_means']}")
    print(
        f"rest of the task ({rest['n']} requests) through the reloaded proxy: accuracy {rest['accuracy']:.3f} at "
        f"${rest['cost_per_request_usd']:.6f}/request; the reference alone {rest['reference_accuracy']:.3f} at "
        f"${rest['reference_cost_per_request_usd']:.6f}"
    )
    a = result["audit"]
    print(
        f"audit: fidelity {a['fidelity']:.3f} (95% CI {a['fidelity_ci95'][0]:.3f}-{a['fidelity_ci95'][1]:.3f}) on "
        f"{a['requests']} shadowed requests, shadow spend ${a['shadow_usd']:.4f}"
    )
    (args.out / "traffic_loop.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
