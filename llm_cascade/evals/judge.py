"""``calibrate --from-ledger ... --judge MODEL``: labels from a stronger model, for users without annotators.

The requests whose label matters are the ones :func:`~llm_cascade.evals.from_ledger.suggest_labels` lists (where
the leading cheaper candidates disagree with the reference). With ``--judge`` a model answers them in place of a
person: its normalised answer becomes that request's gold label (a label from ``--gold`` always wins). The judge is
a real model called through a :class:`~llm_cascade.core.router.Router`, so its calls are priced and recorded in the
same ledger as rows tagged ``judge = "1"`` (and ``judged``: the request they label), never as observations.

A judge is only as good as its agreement with the truth: when ``--gold`` labels exist, the judge also answers up to
``check`` of the labelled requests, and the report gives its agreement with gold (with a 95% interval). It is asked
the request's stored text (the last user message: the ledger keeps it only under ``[shadow] store_text = true``);
requests without text cannot be judged and are counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError

JUDGE_TAG = "judge"  # the tag of a judge call's ledger row (value "1"); "judged" names the request it labels


@dataclass(slots=True)
class Judged:
    """What the judge did: ``labels`` (request id -> its normalised answer) for the asked requests, its answers on
    the gold-labelled requests it was checked on, and what it cost."""

    model: str
    labels: dict[str, str] = field(default_factory=dict)
    asked: int = 0
    no_text: int = 0
    unanswered: int = 0
    checked: int = 0
    agreed: int = 0
    calls: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    unpriced: int = 0

    def to_json(self) -> dict[str, Any]:
        from .audit import wilson

        out: dict[str, Any] = {
            "model": self.model,
            "asked": self.asked,
            "labelled": len(self.labels),
            "no_text": self.no_text,
            "unanswered": self.unanswered,
            "calls": self.calls,
            "cost_usd": float(self.cost_usd),
            "unpriced_calls": self.unpriced,
            "checked_against_gold": self.checked,
        }
        if self.checked:
            out["agreement_with_gold"] = self.agreed / self.checked
            out["agreement_ci95"] = list(wilson(self.agreed, self.checked))
        return out


def judge_router(model: str, ledger: Any, normalizer: str | dict[str, Any], config: Path | None = None) -> Any:
    """A one-member Router of ``model`` recording into ``ledger``: its provider, price and resilience as
    ``config`` (a serve config file) declares them, else resolved like any ``provider:model`` with the shipped
    price table."""
    from ..core.router import Router

    if config is None:
        from .emit import build_normalizer

        return Router([[model]], normalizer=build_normalizer(normalizer), ledger=ledger)
    from ..serve.config import build_components, build_router, load_config, parse_config

    cfg = load_config(config)
    try:
        cascade = parse_config({"cascades": {"judge": {"tiers": [{"members": [model]}], "normalizer": normalizer}}})
    except ConfigError as exc:
        raise ConfigError("--judge", exc.problem) from None
    cfg = cfg.model_copy(update={"cascades": cascade.cascades, "shadow": None, "ledger": None, "budgets": None})
    return build_router(cfg, "judge", components=build_components(cfg), ledger=ledger, shadow=None)


async def _ask(
    router: Any, items: Sequence[tuple[str, str, Mapping[str, str]]], concurrency: int
) -> dict[str, tuple[str | None, Sequence[Any]]]:
    """Each (request id, text, tags) asked of the judge: request id -> (answer, calls)."""
    from ..core.errors import AllTiersFailed, RequestTimeout
    from ..core.types import Request
    from ..testing.answers import ROW_FIELD

    replay = all(m.name.startswith("recorded:") for t in router.tiers for m in t.members)
    gate = asyncio.Semaphore(concurrency)
    out: dict[str, tuple[str | None, Sequence[Any]]] = {}

    async def one(rid: str, text: str, tags: Mapping[str, str]) -> None:
        example = tags.get("example")
        request = Request.from_prompt(
            text,
            temperature=0.0,
            metadata={JUDGE_TAG: "1", "judged": rid},
            # the recorded-answer server answers the example's row (two rows may share a prompt)
            extra_body={ROW_FIELD: example} if replay and example else None,
        )
        async with gate:
            try:
                result = await router.route(request)
            except (AllTiersFailed, RequestTimeout) as exc:
                out[rid] = (None, getattr(exc, "calls", ()))
                return
        out[rid] = (result.answer, result.calls)

    try:
        await asyncio.gather(*(one(*item) for item in items))
    finally:
        await router.aclose()
    return out


def judge(
    runs: Any,
    ask: Sequence[str],
    model: str,
    ledger_url: str,
    normalizer: str | dict[str, Any],
    *,
    config: Path | None = None,
    check: int = 50,
    concurrency: int = 8,
) -> Judged:
    """Ask ``model`` the requests ``ask`` (request ids of ``runs``, a :class:`~llm_cascade.evals.from_ledger.
    LedgerRuns`) and up to ``check`` gold-labelled ones; returns its labels and its agreement with gold."""
    from ..spend.ledger import Ledger

    judged = Judged(model)
    gold = {r.id: r.gold for r in runs.records if r.meta.get("label") == "gold" and r.gold is not None}
    checked = list(gold)[: max(0, check)]
    items: list[tuple[str, str, Mapping[str, str]]] = []
    for rid in [*ask, *checked]:
        text = runs.prompts.get(rid)
        if text is None:
            judged.no_text += 1
            continue
        items.append((rid, text, runs.tags.get(rid, {})))
    judged.asked = len(ask)
    if not items:
        if judged.no_text:
            raise ConfigError(
                "--judge",
                "the ledger keeps no text of these requests, so nothing can be put to a judge: serve with "
                "[shadow] store_text = true",
            )
        return judged
    ledger = Ledger(ledger_url)
    try:
        router = judge_router(model, ledger, normalizer, config)
        answers = asyncio.run(_ask(router, items, concurrency))
    finally:
        ledger.close()
    asked = set(ask)
    for rid, (answer, calls) in answers.items():
        for c in calls:
            judged.calls += 1
            if c.cost_usd is None:
                judged.unpriced += 1
            else:
                judged.cost_usd += c.cost_usd
        if rid in asked:
            if answer is None:
                judged.unanswered += 1
            else:
                judged.labels[rid] = answer
        elif rid in gold:
            judged.checked += 1
            judged.agreed += answer == gold[rid]
    return judged
