"""Issue 23: results priced by default and JSON-ready, one span per member call with GenAI attributes, a quiet library
logger, and ``route_sync`` that reuses one loop, closes cleanly and raises clean exceptions."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from _fakes import span_exporter

from llm_cascade import FakeBackend, Router, Tier
from llm_cascade.core.errors import AllTiersFailed
from llm_cascade.core.types import Completion, Request, Usage
from llm_cascade.testing import RecordedServer

REPO = Path(__file__).resolve().parent.parent


class Priced(FakeBackend):
    """A fake answering as gpt-4o-mini, a model the shipped price table prices."""

    async def complete(self, request: Request) -> Completion:
        done = await super().complete(request)
        return Completion(done.text, done.model, Usage(1000, 100), finish_reason="stop")


async def test_cost_comes_from_the_shipped_table_unless_opted_out() -> None:
    member = Priced("gpt-4o-mini", "B")
    member.name = "openai:gpt-4o-mini"
    priced = await Router([[member]]).route("q")
    assert priced.cost_usd is not None and priced.cost_usd > 0
    assert (await Router([[member]], prices=False).route("q")).cost_usd is None


async def test_a_result_is_json_with_cost_as_string_and_float_and_usage_per_model() -> None:
    a, b = Priced("gpt-4o-mini", "B"), Priced("gpt-4o", "C")
    a.name, b.name = "openai:gpt-4o-mini", "openai:gpt-4o"
    result = await Router([[a], [b]], normalizer="choice").route("q")
    data = json.loads(json.dumps(result.to_dict()))
    assert Decimal(data["cost_usd"]) == result.cost_usd and data["cost_usd_float"] == float(result.cost_usd or 0)
    assert data["usage_by_model"]["openai:gpt-4o-mini"]["input_tokens"] == 1000
    assert data["usage"]["total_tokens"] == 1100 and data["forced_by"] is None and data["model"] == "openai:gpt-4o-mini"
    assert result.model_dump() == result.to_dict()


async def test_a_forced_answer_says_why() -> None:
    router = Router([Tier([FakeBackend("a", "B"), FakeBackend("b", "C")])], normalizer="choice")
    result = await router.route("q")
    assert (result.accepted, result.forced_by, result.to_dict()["forced_by"]) == (False, "last_tier", "last_tier")


async def test_one_span_per_member_call_with_genai_attributes() -> None:
    exporter = span_exporter()
    member = Priced("gpt-4o-mini", "B")
    member.name = "openai:gpt-4o-mini"
    router = Router([Tier([member, FakeBackend("b", "B")])], normalizer="choice", name="genai")
    await router.route("q")
    spans = exporter.get_finished_spans()
    (route,) = [
        s for s in spans if s.name == "llm_cascade.route" and s.attributes["llm_cascade.cascade"] == "router:genai"
    ]  # type: ignore[index]
    calls = [s for s in spans if s.parent is not None and s.parent.span_id == route.context.span_id]
    assert sorted(s.name for s in calls) == ["chat b", "chat gpt-4o-mini"]
    (mini,) = [s for s in calls if s.name == "chat gpt-4o-mini"]
    attrs = dict(mini.attributes or {})
    assert attrs["gen_ai.provider.name"] == "openai" and attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (1000, 100)
    assert attrs["llm_cascade.tier"] == 0 and attrs["llm_cascade.outcome"] == "ok" and attrs["llm_cascade.cost_usd"] > 0


def test_the_library_logger_has_a_null_handler() -> None:
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("llm_cascade").handlers)


SCRIPT = """
import asyncio, gc, sys, warnings
warnings.simplefilter("always")
from llm_cascade import Router
from llm_cascade.backends.openai import OpenAIBackend
from llm_cascade.core.errors import AllTiersFailed

url = sys.argv[1]
router = Router([[OpenAIBackend("echo", base_url=url, api_key="k", transport="http"),
                  OpenAIBackend("echo-2", base_url=url, api_key="k")]], retry=None)
loops = set()
for i in range(6):
    assert router.route_sync("q").answer == "b"
    loops.add(id(router._runner._loops.runners[__import__("threading").get_ident()].get_loop()))
print("loops", len(loops))
try:
    Router([[OpenAIBackend("missing", base_url=url, api_key="k")]], retry=None).route_sync("q")
except AllTiersFailed as exc:
    print("context", exc.__context__ is None)
if sys.argv[2] == "close":
    router.close()
"""


@pytest.mark.parametrize("ending", ["close", "exit"])
def test_route_sync_reuses_one_loop_and_leaves_nothing_on_stderr(ending: str, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    with RecordedServer(script={"echo": "B", "echo-2": "B"}) as server:
        done = subprocess.run(
            [sys.executable, str(script), server.base_url, ending],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["loops", "1", "context", "True"]
    assert done.stderr == ""  # no "Event loop is closed", no "Unclosed client session", no ResourceWarning


async def test_all_tiers_failed_still_raises_cleanly() -> None:
    class Broken(FakeBackend):
        async def complete(self, request: Request) -> Completion:
            from llm_cascade.core.errors import ProviderError

            raise ProviderError("down", model=self.name)

    with pytest.raises(AllTiersFailed):
        await Router([[Broken("x", "B")]], retry=None).route("q")


LEDGER_SCRIPT = """
import sys
from llm_cascade import FakeBackend, Router
from llm_cascade.spend.ledger import Ledger

ledger = Ledger(sys.argv[1])  # never closed
router = Router([[FakeBackend("a", "B")]], ledger=ledger)
for i in range(3):
    router.route_sync(f"q{i}")
"""


def test_a_ledger_never_closed_is_flushed_at_exit(tmp_path: Path) -> None:
    import os

    from llm_cascade.spend.ledger import Ledger

    script = tmp_path / "script.py"
    script.write_text(LEDGER_SCRIPT)
    db = tmp_path / "spend.db"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(script), str(db)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    with Ledger(db, journal=False) as ledger:
        assert ledger.count() == 3
