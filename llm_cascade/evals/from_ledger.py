"""Recorded runs built from the ledger's observations: calibration on the user's own traffic.

A shadowed request (:mod:`llm_cascade.core.shadow`) leaves one ledger row per model that answered it, with the
model's normalised answer, confidence, tokens and cost. Grouped by request, those rows are exactly the recorded-run
format (:mod:`llm_cascade.evals.records`), so everything calibration does on files works on them.

What "correct" means there is the one thing that changes. Traffic has no gold labels, so by default a model's
answer is "correct" when it is the *reference model's* answer: accuracy is then **fidelity to the reference**, and a
margin is a fidelity loss. Fidelity is safe (a cascade faithful to the reference is as good as it) but blind to a
cascade that beats the reference: the accuracy difference between a candidate and the reference lives only on the
requests where they disagree. So :func:`suggest_labels` lists those requests (where the leading candidates disagree
with the reference, stratified over candidates), and :func:`read_gold` joins the labels a person (or a judge) gave
them; the matrix then scores by gold where it is known and by fidelity elsewhere. (A pool consensus as pseudo-gold was
measured unsafe: cheap models' errors are correlated, so the consensus picks cascades below the reference.)
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from .records import ModelRun, Record, RecordError

GOLD_KEYS = ("request_id", "example", "id")  # how a label names its request: the ledger's id, the example tag


@dataclass(frozen=True, slots=True)
class Observation:
    """One model's observed call of one shadowed request (its retried attempts folded in)."""

    request_id: str
    model: str
    answer: str | None
    confidence: float | None
    tokens_in: int
    tokens_out: int
    cost_usd: Decimal | None
    shadow: bool
    ts: float
    tags: Mapping[str, str]
    prompt: str | None
    digest: str | None


@dataclass(slots=True)
class LedgerRuns:
    """The observations as recorded runs: ``records`` (one per usable shadowed request, ``gold`` set to the label
    the matrix scores against), the ``reference`` model, the ``models`` observed on every kept request, and what was
    left out and why."""

    records: list[Record]
    reference: str
    models: list[str]
    requests: int
    no_reference: int = 0
    incomplete: int = 0
    gold_known: int = 0
    gold_unmatched: int = 0
    judged: int = 0  # of gold_known: labels a judge model gave (evals.judge)
    judge: str | None = None
    tags: dict[str, Mapping[str, str]] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)

    @property
    def used(self) -> int:
        """Requests calibrated on."""
        return len(self.records)

    @property
    def labels(self) -> str:
        """What "accuracy" means in every report of these runs."""
        return labels_text(self.reference, self.gold_known, len(self.records), self.judged, self.judge)

    def prices(self, models: Sequence[str]) -> dict[str, dict[str, Any]]:
        """:func:`fit_prices` on these runs."""
        return fit_prices(self.records, models)


def labels_text(reference: str, gold_known: int, used: int, judged: int = 0, judge: str | None = None) -> str:
    """What "accuracy" means in every report of runs from the ledger (:attr:`LedgerRuns.labels`)."""
    if gold_known == 0:
        return f"fidelity to {reference} (no gold labels: correct = the reference's answer)"
    by_judge = f" ({judged} of them labelled by the judge {judge})" if judged else ""
    return (
        f"gold on {gold_known} of {used} requests{by_judge}, fidelity to {reference} on "
        "the rest (correct = the gold answer where known, else the reference's answer)"
    )


def read_observations(url: str, *, since: float | None = None) -> list[Observation]:
    """Every observed call in the ledger at ``url`` (rows written for a shadowed request), oldest first."""
    from ..spend.ledger import Ledger

    ledger = Ledger(url, journal=False)
    try:
        rows = [r for r in ledger.rows(since=since) if r.digest is not None]
    finally:
        ledger.close()
    merged: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        merged.setdefault((r.request_id, r.model), []).append(r)
    out: list[Observation] = []
    for (rid, model), attempts in merged.items():
        answered = [a for a in attempts if a.outcome == "ok"]
        last = answered[-1] if answered else attempts[-1]
        costs = [a.cost_usd for a in attempts]
        cost = None if any(c is None for c in costs) else sum((c for c in costs if c is not None), Decimal(0))
        tags = {k: v for k, v in last.tags.items() if k != "shadow"}
        out.append(
            Observation(
                rid,
                model,
                last.answer if last.outcome == "ok" else None,
                last.confidence,
                sum(a.input_tokens for a in attempts),
                sum(a.output_tokens for a in attempts),
                cost,
                "shadow" in last.tags,
                min(a.ts for a in attempts),
                tags,
                last.prompt,
                last.digest,
            )
        )
    return out


def read_gold(path: str | Path, normalize: Callable[[str], str | None] | None = None) -> dict[tuple[str, str], str]:
    """Labels from a JSONL file: rows ``{"gold": ..., "request_id": ...}`` or ``{"gold": ..., "example": ...}`` (or
    any other tag as its key). Returns ``{(key, value): gold}``; ``normalize`` reads each gold like the answers."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--gold", f"{p}: no such file")
    out: dict[tuple[str, str], str] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ConfigError("--gold", f"{p}:{n}: not valid JSON ({exc})") from None
        if not isinstance(row, dict) or row.get("gold") is None:
            raise ConfigError("--gold", f"{p}:{n}: each row needs a 'gold' answer")
        keys = [k for k in row if k != "gold" and isinstance(row[k], str | int)]
        key = next((k for k in GOLD_KEYS if k in row), keys[0] if keys else None)
        if key is None:
            raise ConfigError("--gold", f"{p}:{n}: name the request by 'request_id' or a tag such as 'example'")
        gold = str(row["gold"])
        out[(key, str(row[key]))] = (normalize(gold) if normalize is not None else None) or gold.strip()
    return out


def _gold_for(obs: Observation, gold: Mapping[tuple[str, str], str]) -> str | None:
    return _label_for(obs.request_id, obs.tags, gold)


def _label_for(request_id: str, tags: Mapping[str, str], gold: Mapping[tuple[str, str], str]) -> str | None:
    """The label of a request named by its id or one of its tags (``example`` first), if ``gold`` has one."""
    found = gold.get(("request_id", request_id))
    if found is None:  # a plain "id" names the request or the example, whichever it matches
        found = gold.get(("id", request_id)) or gold.get(("id", tags.get("example", "")))
    if found is not None:
        return found
    for key, value in tags.items():
        found = gold.get((key, value))
        if found is not None:
            return found
    return None


def ledger_runs(
    observations: Sequence[Observation],
    reference: str,
    *,
    gold: Mapping[tuple[str, str], str] | None = None,
    models: Sequence[str] | None = None,
    min_share: float = 0.5,
) -> LedgerRuns:
    """Group observations by request into recorded runs scored against ``reference`` (and ``gold`` where known).

    ``models`` defaults to every model observed on at least ``min_share`` of the requests (a model added to the
    pool last week is left out rather than leaving most requests out); only requests where all of them and the
    reference were observed are kept (calibration compares every model on the same requests).
    """
    by_request: dict[str, dict[str, Observation]] = defaultdict(dict)
    for o in observations:
        by_request[o.request_id][o.model] = o
    total = len(by_request)
    if total == 0:
        raise RecordError("the ledger holds no observations: serve with a [shadow] section (or Router(shadow=...))")
    seen = {m for obs in by_request.values() for m in obs}
    ref = _model_name(reference, seen)
    counts: dict[str, int] = defaultdict(int)
    for obs in by_request.values():
        for m in obs:
            counts[m] += 1
    names = [_model_name(m, seen) for m in models] if models is not None else None
    if names is None:
        names = sorted((m for m in seen if counts[m] >= min_share * total), key=lambda m: (-counts[m], m))
    if ref not in names:
        names.insert(0, ref)
    gold = gold or {}
    runs = LedgerRuns([], ref, names, total)
    matched: set[tuple[str, str]] = set()
    for rid, obs in by_request.items():
        if any(m not in obs for m in names):
            runs.incomplete += 1
            continue
        any_obs = obs[ref]
        label = _gold_for(any_obs, gold) if gold else None
        if label is not None:
            runs.gold_known += 1
            matched.update({("request_id", rid), ("id", rid), ("id", any_obs.tags.get("example", ""))})
            matched.update(any_obs.tags.items())
        elif obs[ref].answer is None:
            runs.no_reference += 1
            continue
        target = label if label is not None else obs[ref].answer
        record_models = {m: _run(obs[m]) for m in names}
        runs.records.append(
            Record(rid, any_obs.prompt or "", record_models, target, {"label": "gold" if label else "reference"})
        )
        runs.tags[rid] = dict(any_obs.tags)
        if any_obs.prompt is not None:
            runs.prompts[rid] = any_obs.prompt
    runs.gold_unmatched = len([k for k in gold if k not in matched])
    if not runs.records:
        raise RecordError(
            f"no shadowed request has an answer of {ref} and of every model in {', '.join(names)} "
            f"({total} requests observed, {runs.incomplete} incomplete, {runs.no_reference} without a reference answer)"
        )
    return runs


def _run(o: Observation) -> ModelRun:
    return ModelRun(
        answer=o.answer,
        tokens_in=o.tokens_in,
        tokens_out=o.tokens_out,
        cost_usd=None if o.cost_usd is None else float(o.cost_usd),
        confidence=o.confidence,
    )


def _model_name(name: str, seen: Iterable[str]) -> str:
    """``name`` as the ledger writes it: exact, or the one observed model whose name after the provider matches."""
    seen = set(seen)
    if name in seen:
        return name
    matches = [m for m in seen if m.partition(":")[2] == name or m.rsplit("/", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(
        "--reference" if not matches else "--models",
        f"model {name!r} is not observed in the ledger (observed: {', '.join(sorted(seen))})",
    )


def suggest_labels(runs: LedgerRuns, n: int, *, leading: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """The ``n`` requests whose gold answer would most change the decision.

    A cascade differs from the reference only where its accepted answer differs from the reference's, and that answer
    is one of the cheaper models'. The *leading candidates* are the ``leading`` models cheaper than the reference
    that agree with it most; each request is scored by how confidently they disagree with the reference (a
    disagreement counts its confidence, 1 when unknown); the requests are taken candidate by candidate in turn, each
    taking its highest-scored disagreement not yet taken (stratified: every leading candidate gets its share of
    labels, not only the one that disagrees most). Requests already labelled are skipped.
    """
    if n <= 0:
        return []
    ref = runs.reference
    cost: dict[str, float] = {}
    agree: dict[str, float] = {}
    for m in runs.models:
        costs = [r.models[m].cost_usd for r in runs.records]
        cost[m] = math.fsum(c for c in costs if c is not None) / max(1, len(costs))
        agree[m] = sum(r.models[m].answer == r.models[ref].answer for r in runs.records) / len(runs.records)
    cheaper = [m for m in runs.models if m != ref and cost[m] < cost[ref]]
    lead = sorted(cheaper, key=lambda m: -agree[m])[:leading] or [m for m in runs.models if m != ref]
    rng = random.Random(seed)
    unlabelled = [r for r in runs.records if r.meta.get("label") != "gold"]
    score: dict[str, float] = {}
    lists: dict[str, list[Record]] = {m: [] for m in lead}
    for r in unlabelled:
        ra = r.models[ref].answer
        s = 0.0
        for m in lead:
            run = r.models[m]
            if run.answer is not None and run.answer != ra:
                s += run.confidence if run.confidence is not None else 1.0
                lists[m].append(r)
        if ra is None:
            s += 1.0
        score[r.id] = s + rng.random() * 1e-6  # a seeded tie-break
    for m in lead:
        lists[m].sort(key=lambda r: -score[r.id])
    taken: list[Record] = []
    chosen: set[str] = set()
    cursors = dict.fromkeys(lead, 0)
    while len(taken) < n and any(cursors[m] < len(lists[m]) for m in lead):
        for m in lead:
            items = lists[m]
            while cursors[m] < len(items) and items[cursors[m]].id in chosen:
                cursors[m] += 1
            if cursors[m] < len(items) and len(taken) < n:
                r = items[cursors[m]]
                chosen.add(r.id)
                taken.append(r)
    out = []
    for r in taken:
        row: dict[str, Any] = {"request_id": r.id, "tags": runs.tags.get(r.id, {})}
        if "example" in row["tags"]:
            row["example"] = row["tags"]["example"]
        if r.id in runs.prompts:
            row["prompt"] = runs.prompts[r.id]
        row["reference_answer"] = r.models[ref].answer
        out.append(row)
    return out


def fit_prices(runs: Sequence[Record], models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-model prices that reproduce the observed costs: USD per 1M input/output tokens by least squares when that
    fits every call to 0.5%, else the mean cost per request. What ``--emit`` writes, so the served cascade is priced
    as it was calibrated (a cascade with unknown prices cannot be budgeted or audited)."""
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    for m in models:
        rows = [(r.models[m].tokens_in, r.models[m].tokens_out, r.models[m].cost_usd) for r in runs if m in r.models]
        rows = [t for t in rows if t[2] is not None]
        x = np.array([[a, b] for a, b, _ in rows], dtype=float).reshape(-1, 2)
        entry = fit_price(x[:, 0], x[:, 1], np.array([c for _, _, c in rows], dtype=float))
        if entry is not None:
            out[m] = entry
    return out


def fit_price(tokens_in: Any, tokens_out: Any, cost: Any) -> dict[str, Any] | None:
    """One model's price from its priced calls' token counts and costs (arrays of one length): what
    :func:`fit_prices` does per model, for callers that hold columns rather than records. None without a call."""
    import numpy as np

    y = np.asarray(cost, dtype=float)
    if len(y) == 0:
        return None
    x = np.column_stack([np.asarray(tokens_in, dtype=float), np.asarray(tokens_out, dtype=float)])
    entry: dict[str, Any] | None = None
    if len(y) >= 2 and np.linalg.matrix_rank(x) == 2:
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        fitted = x @ coef
        if (coef >= 0).all() and np.all(np.abs(fitted - y) <= 0.005 * np.maximum(np.abs(y), 1e-12)):
            entry = {"input": _price(coef[0] * 1e6), "output": _price(coef[1] * 1e6)}
    if entry is None:
        entry = {"input": 0, "output": 0, "per_request": _price(float(y.mean()))}
    entry["source"] = f"fitted by llm-cascade calibrate to {len(y)} observed calls"
    return entry


def _price(value: float) -> str:
    return format(Decimal(repr(round(float(value), 12))).normalize(), "f")
