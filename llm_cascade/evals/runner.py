"""Run one cascade over one task spec, live or replayed, and report what it scored: `llm-cascade eval`.

Both modes go through the production Router built from the cascade file (``llm_cascade.serve.config.build_router``), so
the figures are what that configuration does, not what a model of it predicts:

- **live**: every member is called through its configured backend; decided answers are kept in the Router's response
  cache (:class:`EvalCache`: a :class:`~llm_cascade.core.cache_shared.SharedCache` on a SQLite file in the report
  folder, kept between runs), so a rerun costs nothing: its requests are ledger rows of outcome ``cache_hit`` and cost
  0, while the report still scores and prices each answer by the calls that made it;
- **replay**: the task's recorded runs are served by the local recorded-answer server
  (:class:`~llm_cascade.testing.RecordedServer`) to the members written ``recorded:<model>``, so each model answers
  what it really answered, with the tokens it was really billed. No key, no network.

The report (JSON, markdown, PNG) gives accuracy with a 95% bootstrap interval, the escalation rate, the share of
requests each tier answered, $ per request (None when any price is unknown, never 0) and, where the data holds
recorded runs, every model of the cascade alone on the same questions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.cache_shared import SharedCache
from ..core.errors import AllTiersFailed, ConfigError, RequestTimeout
from ..core.types import Call, Request, RouteResult
from ..spend.cachestore import DatabaseCache
from .records import Record
from .tasks import Example, TaskSpec, task_records

if TYPE_CHECKING:
    from ..core.router import Router

REPLAY_PROVIDER = "recorded"


@dataclass(frozen=True)
class Outcome:
    """What the cascade did with one example."""

    id: str
    answer: str | None
    correct: bool | None
    tier: int | None
    escalated: bool
    cost_usd: Decimal | None
    calls: int
    error: str | None = None


def _calls(result: RouteResult | BaseException) -> tuple[Call, ...]:
    if isinstance(result, RouteResult):
        return result.calls
    return tuple(c for c in getattr(result, "calls", ()) if isinstance(c, Call))


def _cost(calls: Sequence[Call]) -> Decimal | None:
    total = Decimal(0)
    for c in calls:
        if c.cost_usd is None:
            return None
        total += c.cost_usd
    return total


def _judged(
    record: Record | None, answer: str | None, calls: Sequence[Call], normalize: Callable[[str], str | None]
) -> bool | None:
    """Free-text answers judged by an LLM: the recorded labels of the models that gave this answer in this request
    (else of any recorded model that gave it) decide; when those labels differ, the answer counts as wrong."""
    if record is None or answer is None:
        return None
    answered = {c.model.partition(":")[2].rsplit("/", 1)[-1] for c in calls if c.answer == answer}
    same = {
        model: run.correct
        for model, run in record.models.items()
        if run.correct is not None and run.text is not None and normalize(run.text) == answer
    }
    labels = [v for m, v in same.items() if m in answered] or list(same.values())
    return all(labels) if labels else None


def score(spec: TaskSpec, ex: Example, result: RouteResult | BaseException) -> Outcome:
    calls = _calls(result)
    answer = result.answer if isinstance(result, RouteResult) else None
    if spec.metric == "judged":
        correct = _judged(ex.record, answer, calls, spec.normalizer())
    else:
        correct = None if ex.gold is None else answer == ex.gold
    return Outcome(
        id=ex.id,
        answer=answer,
        correct=correct,
        tier=result.tier if isinstance(result, RouteResult) else None,
        escalated=any(c.tier > 0 for c in calls),
        cost_usd=_cost(calls),
        calls=len(calls),
        error=None if isinstance(result, RouteResult) else f"{type(result).__name__}: {result}",
    )


async def route_examples(
    router: Router,
    spec: TaskSpec,
    examples: Sequence[Example],
    *,
    concurrency: int = 32,
    on_done: Callable[[int], None] | None = None,
    replay: bool = False,
    cache: EvalCache | None = None,
) -> list[Outcome]:
    """Every example through the router, ``concurrency`` at a time. A request no tier could answer is kept with the
    calls it billed (the cascade's cost includes them). ``replay``: each request names its example to the
    recorded-answer server (body field ``llm_cascade_row``), which answers that row, not whichever row has the same
    prompt. ``cache``: the Router's response cache, whose hits are scored by the calls that made the answer."""
    from ..testing.answers import ROW_FIELD

    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(ex: Example) -> Outcome:
        nonlocal done
        # Tagged with the example's id: the ledger's rows of it (shadow observations included) join its gold labels.
        request = Request.from_prompt(
            ex.prompt,
            system=spec.system,
            max_tokens=spec.max_tokens,
            temperature=0.0,  # evaluations are greedy, as before Request stopped defaulting to 0 (same cache keys)
            metadata={"example": ex.id},
            extra_body={ROW_FIELD: ex.id} if replay else None,
        )
        async with gate:
            result: RouteResult | BaseException
            try:
                result = await router.route(request)
                if cache is not None:
                    result = cache.restore(result)
            except (AllTiersFailed, RequestTimeout) as exc:
                result = exc
        done += 1
        if on_done is not None:
            on_done(done)
        return score(spec, ex, result)

    return list(await asyncio.gather(*(one(ex) for ex in examples)))


# -- building the router ---------------------------------------------------------------------------------------------


def cascade_name(cfg: Any, spec: TaskSpec, name: str | None) -> str:
    """The cascade to run: ``name``, else the one named like the task, else the file's only cascade."""
    names = sorted(cfg.cascades)
    if name is not None:
        return name
    if spec.name in cfg.cascades:
        return spec.name
    if len(names) == 1:
        return str(names[0])
    raise ConfigError("--name", f"the cascade file defines {', '.join(names)}: say which one to run")


def member_names(router: Router) -> list[str]:
    return [m.name for tier in router.tiers for m in tier.members]


def check_replayable(router: Router, records: Sequence[Record]) -> None:
    """Replay answers only ``recorded:<model>`` members whose model has recorded answers: say so before any call."""
    known = {m for r in records for m in r.models}
    shadow = router.shadow.pool if router.shadow is not None else []
    for name in [*member_names(router), *shadow]:
        provider, _, model = name.partition(":")
        if provider != REPLAY_PROVIDER:
            raise ConfigError(
                "cascade", f"member {name!r}: --replay answers only members written '{REPLAY_PROVIDER}:<model>'"
            )
        if model.rsplit("/", 1)[-1] not in known:
            raise ConfigError("cascade", f"member {name!r}: no recorded answers of {model!r} in this task's data")


def cascade_models(cascade: Path, spec: TaskSpec, name: str | None = None) -> list[str]:
    """The models a cascade file's members name (building the Router calls nothing), e.g. to import only those."""
    from ..serve.config import build_router, load_config

    cfg = load_config(cascade, env={**os.environ, "RECORDED_BASE_URL": os.environ.get("RECORDED_BASE_URL", "http://-")})
    router = build_router(cfg, cascade_name(cfg, spec, name))
    return list(dict.fromkeys(m.partition(":")[2] or m for m in member_names(router)))


class _Remembering(SharedCache):
    """A SharedCache that keeps each hit's cached result by request id until the scorer asks for it, and sums what
    the hits saved."""

    def __init__(self, backend: DatabaseCache, namespace: str) -> None:
        super().__init__(backend, ttl=None, namespace=namespace, timeout_s=60.0)
        self.found: dict[str, RouteResult] = {}
        self.saved: Decimal | None = Decimal(0)

    async def get(self, request: Request) -> RouteResult | None:
        found = await super().get(request)
        if found is not None:
            self.found[request.request_id] = found
            cost = found.cost_usd
            self.saved = None if cost is None or self.saved is None else self.saved + cost
        return found


class EvalCache:
    """The live eval's response cache: the Router's own (:class:`~llm_cascade.core.cache_shared.SharedCache`) on
    the ledger-database backend, in a SQLite file that outlives the run (entries never expire), so a rerun of the same
    cascade on the same questions calls no model.

    Entries are kept apart per cascade configuration (``namespace``: the cascade's section and the task's
    normalizer), so a changed rule or member list never reuses another configuration's decisions. A hit is a ledger
    row of cost 0 (no money was spent); :meth:`restore` gives the scorer back the calls that made the answer, so
    accuracy, escalations and the cost per request are the configuration's, whether answered now or before."""

    def __init__(self, path: Path, namespace: str) -> None:
        self.path = path
        self.store = DatabaseCache(path, table="eval", maxsize=10_000_000)
        self.cache = _Remembering(self.store, namespace)

    def restore(self, result: RouteResult) -> RouteResult:
        """``result`` as the scorer needs it: a hit carries the calls of the cached answer again."""
        original = self.cache.found.pop(result.request_id, None)
        if original is None or [c.outcome for c in result.calls] != ["cache_hit"]:
            return result
        return replace(result, calls=original.calls)

    @property
    def hits(self) -> int:
        return self.cache.hits

    @property
    def misses(self) -> int:
        return self.cache.misses

    def close(self) -> None:
        self.store.close()


def config_namespace(cfg: Any, chosen: str, spec: TaskSpec) -> str:
    """What keeps one configuration's cached decisions apart from another's: the cascade's section as the file
    wrote it (members, rules, normalizer, timeouts) and the task whose normalizer reads the answers."""
    section = cfg.cascades[chosen].model_dump_json()
    digest = hashlib.sha256(f"{section}|{spec.name}|{spec.format}".encode()).hexdigest()[:16]
    return f"eval:{chosen}:{digest}"


@contextlib.contextmanager
def replay_server(spec: TaskSpec, records: Sequence[Record]) -> Iterator[Any]:
    """The recorded-answer server for this task: the raw rational files as they are; other formats as a script of
    the answers their importer extracted (re-extracting from a chain of thought could read another number or date
    than the recorded one), with the recorded token counts where there are any."""
    from ..testing import Answer, RecordedServer

    if spec.format == "rational":
        server = RecordedServer(spec.path)
    else:
        script: dict[str, dict[str, Answer]] = {}
        rows: dict[str, dict[str, Answer]] = {}
        for r in records:
            for model, run in r.models.items():
                text = run.answer or ""  # what the importer read from the text: the task's normalizer keeps it
                conf = run.confidence
                answer = Answer(
                    text,
                    tokens_in=run.tokens_in or None,  # 0 means "not counted": the server estimates, never bills 0
                    tokens_out=run.tokens_out or None,
                    logprob=math.log(conf) if conf is not None and conf > 0 else None,
                )
                script.setdefault(model, {})[r.prompt] = answer
                rows.setdefault(model, {})[r.id] = answer
        server = RecordedServer(script=script, rows=rows)
    with server:
        yield server


async def _aclose(router: Router) -> None:
    for tier in router.tiers:
        for member in tier.members:
            seen: set[int] = set()
            obj: Any = member
            while obj is not None and id(obj) not in seen:
                seen.add(id(obj))
                close = getattr(obj, "aclose", None)
                if callable(close):
                    with contextlib.suppress(Exception):
                        await close()
                    break
                obj = getattr(obj, "inner", None) or getattr(obj, "backend", None)


def run_eval(
    spec: TaskSpec,
    examples: Sequence[Example],
    cascade: Path,
    *,
    name: str | None = None,
    replay: bool = False,
    cache: Path | None = None,
    concurrency: int = 32,
    on_done: Callable[[int], None] | None = None,
    ledger: str | Path | None = None,
) -> dict[str, Any]:
    """Build the cascade from its file, run it over the examples (live or replayed), return the JSON report.

    Every call is recorded in ``ledger`` (a path or database URL), never in the cascade file's own ledger: an eval
    must not spend a production budget. None records nothing. The file's ``[shadow]`` section applies: its
    observations are written to the same ledger, and the run waits for them before it reports."""
    from ..serve.config import LedgerConfig, build_router, load_config

    records = task_records(examples) if spec.recorded else None
    if replay and records is None:
        raise ConfigError("--replay", f"{spec.file.name}: data format {spec.format!r} holds no recorded answers")

    async def go(env: Mapping[str, str] | None) -> tuple[list[Outcome], str, list[str], EvalCache | None]:
        cfg = load_config(cascade, env=env)
        cfg = cfg.model_copy(update={"ledger": None if ledger is None else LedgerConfig(url=str(ledger))})
        if cfg.ledger is None and cfg.budgets is not None:
            cfg = cfg.model_copy(update={"budgets": None})  # their periods would be counted in the file's ledger
        chosen = cascade_name(cfg, spec, name)
        responses = None if replay or cache is None else EvalCache(cache, config_namespace(cfg, chosen, spec))
        # The task reads every answer (its normalizer), so answers are scored the way the task defines them.
        overrides: dict[str, Any] = {"normalizer": spec.normalizer()}
        if responses is not None:
            overrides["cache"] = responses.cache
        router = build_router(cfg, chosen, **overrides)
        if replay:
            assert records is not None
            check_replayable(router, records)
        if router.shadow is not None:  # an eval observes every sampled request: none is dropped for being late
            router.shadow.max_pending = max(router.shadow.max_pending, len(examples))
            router.shadow.concurrency = max(router.shadow.concurrency, concurrency)
        try:
            outs = await route_examples(
                router, spec, examples, concurrency=concurrency, on_done=on_done, replay=replay, cache=responses
            )
            if router.shadow is not None:
                await router.shadow.drain()
        finally:
            if router.shadow is not None:
                await router.shadow.aclose()
            await _aclose(router)
            if responses is not None:
                responses.close()
            close = getattr(router.ledger, "close", None)
            if callable(close):
                await asyncio.to_thread(close)
        return outs, chosen, member_names(router), responses

    if replay:
        assert records is not None
        with replay_server(spec, records) as server:
            env = {**os.environ, "RECORDED_BASE_URL": server.base_url}
            outcomes, chosen, members, responses = asyncio.run(go(env))
    else:
        outcomes, chosen, members, responses = asyncio.run(go(None))
    from .summary import summarize

    report = summarize(
        spec, outcomes, members, records, cascade=f"{cascade}#{chosen}", mode="replay" if replay else "live"
    )
    if responses is not None:
        saved = responses.cache.saved
        report["response_cache"] = {
            "path": str(cache),
            "hits": responses.hits,
            "misses": responses.misses,
            "saved_usd": None if saved is None else float(saved),
        }
    return report
