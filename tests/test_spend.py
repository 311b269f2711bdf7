"""Spend reports over a ledger filled by routing recorded MMLU answers; the spend and price CLI commands."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _fakes import Recorded, mmlu_rows
from typer.testing import CliRunner

from llm_cascade import Router, Tier, Usage
from llm_cascade.core.errors import ConfigError
from llm_cascade.core.types import Call
from llm_cascade.serve.cli import _app
from llm_cascade.spend.ledger import Ledger
from llm_cascade.spend.pricing import PriceTable
from llm_cascade.spend.report import spend_report

CHEAP = ("llama3.1-8b", "gpt-4o-mini")
TOP = "gpt-4o"
DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


@pytest.fixture
async def filled(data_dir: Path, tmp_path: Path) -> tuple[Ledger, dict[str, dict[str, Any]]]:
    """Route every recorded MMLU question through a two-tier cascade, over three days and two apps."""
    rows = mmlu_rows(data_dir)
    clock = [T0]
    ledger = Ledger(tmp_path / "spend.db", clock=lambda: clock[0])
    router = Router(
        [Tier([Recorded(m, rows) for m in CHEAP]), Tier([Recorded(TOP, rows)])],
        normalizer="choice",
        prices=PriceTable.default(),
        ledger=ledger,
    )
    for i, prompt in enumerate(rows):
        clock[0] = T0 + (i % 3) * DAY
        await router.route(prompt, tags={"app": "mmlu" if i % 2 else "quiz"})
    return ledger, rows


@pytest.mark.data
def test_report_by_model_tier_tag_and_day(filled: tuple[Ledger, dict[str, dict[str, Any]]]) -> None:
    ledger, rows = filled
    recorded = [r["models"] for r in rows.values()]
    cheap_cost = sum(Decimal(repr(m[x]["cost_usd"])) for m in recorded for x in CHEAP)
    by_model = spend_report(ledger, by="model")
    lines = {x.key: x for x in by_model.lines}
    assert set(lines) == {"fake:llama3.1-8b", "fake:gpt-4o-mini", "fake:gpt-4o"}
    assert lines["fake:gpt-4o-mini"].requests == len(rows)
    assert abs(lines["fake:llama3.1-8b"].cost_usd + lines["fake:gpt-4o-mini"].cost_usd - cheap_cost) < Decimal("1e-9")
    assert by_model.total.cost_usd == ledger.spend()
    assert by_model.total.requests == len(rows)
    escalated = lines["fake:gpt-4o"].requests
    assert 0 < escalated < len(rows)
    by_tier = {x.key: x for x in spend_report(ledger, by="tier").lines}
    assert by_tier["1"].calls == escalated and by_tier["0"].calls == 2 * len(rows)
    by_tag = {x.key: x.requests for x in spend_report(ledger, by="tag:app").lines}
    assert by_tag == {"mmlu": len(rows) // 2, "quiz": len(rows) - len(rows) // 2}
    by_day = {x.key: x.requests for x in spend_report(ledger, by="day").lines}
    assert list(by_day) == ["2026-01-01", "2026-01-02", "2026-01-03"] and sum(by_day.values()) == len(rows)
    assert spend_report(ledger, since=T0 + DAY, until=T0 + 2 * DAY).total.requests == by_day["2026-01-02"]
    assert spend_report(ledger, tags={"app": "quiz"}).total.requests == by_tag["quiz"]

    # Always gpt-4o: the recorded gpt-4o cost of every question. Requests that never reached it are estimated.
    b = by_model.baseline
    assert b is not None and b.cost_usd is not None and b.saving_usd is not None
    truth = sum(Decimal(repr(m[TOP]["cost_usd"])) for m in recorded)
    assert b.models == ("fake:gpt-4o",) and b.estimated_requests == len(rows) - escalated
    assert abs(b.cost_usd - truth) / truth < Decimal("0.05")
    assert b.saving_usd == b.cost_usd - by_model.total.cost_usd and b.saving_usd > 0

    md = by_model.to_markdown()
    assert "| fake:gpt-4o |" in md and "saving" in md
    doc = json.loads(json.dumps(by_model.to_json()))
    assert doc["total"]["requests"] == len(rows) and doc["always_top_tier"]["saving_usd"] > 0


def test_baseline_is_exact_when_every_request_reached_the_top_and_unknown_without_a_price(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    c = Decimal("0.001")
    ledger.record(
        "r1", [Call("a", 0, "ok", Usage(10, 1), cost_usd=c), Call("t", 1, "ok", Usage(10, 1), cost_usd=c * 9)], {}
    )
    ledger.record("r2", [Call("t", 1, "ok", Usage(10, 1), cost_usd=c * 8)], {})
    report = spend_report(ledger, prices=PriceTable({}, fallback=None))
    assert report.baseline is not None
    assert (report.baseline.cost_usd, report.baseline.saving_usd) == (c * 17, Decimal(0) - c)
    ledger.record("r3", [Call("a", 0, "ok", Usage(10, 1), cost_usd=c)], {})
    # "t" is in no price table (a member priced next to itself): r3 is priced at the rate its recorded calls were
    # billed, 0.017 USD for 22 tokens, i.e. 0.0085 for r3's 11
    rated = spend_report(ledger, prices=PriceTable({}, fallback=None)).baseline
    assert rated is not None and rated.from_recorded_rate == ("t",) and rated.cost_usd == c * 17 + c * Decimal("8.5")
    ledger.record("r4", [Call("u", 0, "ok", Usage(10, 1)), Call("v", 1, "ok", Usage(10, 1))], {})
    unknown = spend_report(ledger, prices=PriceTable({}, fallback=None), top_models=["v"]).baseline
    assert unknown is not None and unknown.cost_usd is None  # no price anywhere: unknown, never 0
    assert "unknown" in spend_report(ledger, prices=PriceTable({}, fallback=None), top_models=["v"]).to_markdown()
    with pytest.raises(ConfigError, match="tag:NAME"):
        spend_report(ledger, by="colour")


def test_cli_spend_and_price(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    ledger = Ledger(db)
    ledger.record("r1", [Call("openai:gpt-4o", 0, "ok", Usage(128, 1), cost_usd=Decimal("0.00033"))], {"app": "x"})
    ledger.close()
    runner = CliRunner()
    out = runner.invoke(_app(), ["spend", "--db", str(db), "--format", "json", "--by", "tag:app"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output.strip().splitlines()[-1])
    assert doc["lines"][0]["key"] == "x" and doc["total"]["cost_usd"] == pytest.approx(0.00033)
    table = runner.invoke(_app(), ["spend", "--db", str(db)])
    assert table.exit_code == 0 and "openai:gpt-4o" in table.output
    price = runner.invoke(_app(), ["price", "openai:gpt-4o-mini", "--tokens-in", "1000", "--tokens-out", "100"])
    assert price.exit_code == 0, price.output
    last = json.loads(price.output.strip().splitlines()[-1])
    assert last == {"model": "openai:gpt-4o-mini", "cost_usd": pytest.approx(0.00021)}
    unknown = runner.invoke(_app(), ["price", "no-such-model", "--tokens-in", "5"])
    assert json.loads(unknown.output.strip().splitlines()[-1])["cost_usd"] is None


def test_retried_attempts_and_their_cost_per_model(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    billed, answer, other = Decimal("0.002"), Decimal("0.003"), Decimal("0.0007")
    ledger.record(
        "r1",
        [
            Call("a", 0, "error", error="RateLimited: busy"),
            Call("a", 0, "error", Usage(10, 5), cost_usd=billed, error="MalformedResponseError", attempt=2),
            Call("a", 0, "ok", Usage(10, 1), cost_usd=answer, attempt=3),
            Call("b", 0, "ok", Usage(10, 1), cost_usd=other),
        ],
        {},
    )
    ledger.record("r2", [Call("a", 0, "ok", Usage(10, 1), cost_usd=answer)], {})
    report = spend_report(ledger, prices=PriceTable({}, fallback=None))
    lines = {x.key: x for x in report.lines}
    assert (lines["a"].retries, lines["a"].retry_cost_usd) == (2, billed + answer)
    assert (lines["b"].retries, lines["b"].retry_cost_usd) == (0, 0)
    assert (report.total.retries, report.total.retry_cost_usd) == (2, billed + answer)
    assert lines["a"].errors == 2 and lines["a"].calls == 4
    doc = report.to_json()
    assert doc["lines"][0]["retries"] == 2 and doc["lines"][0]["retry_cost_usd"] == pytest.approx(0.005)
    md = report.to_markdown()
    assert "| retries |" in md and "| 2 (0.005 USD) |" in md


async def test_retries_made_by_the_router_reach_the_report(tmp_path: Path) -> None:
    from llm_cascade import FakeBackend, RateLimited
    from llm_cascade.resilience.retry import Retrying, RetryPolicy

    async def no_wait(_: float) -> None:
        return None

    ledger = Ledger(tmp_path / "l.db")
    flaky = FakeBackend("a", [RateLimited("busy"), "B", RateLimited("busy"), RateLimited("busy"), "B", "B"])
    router = Router(
        [Tier([Retrying(flaky, RetryPolicy(attempts=3), sleep=no_wait)])], normalizer="choice", ledger=ledger
    )
    for _ in range(3):
        assert (await router.route("q")).answer == "B"
    line = spend_report(ledger, prices=PriceTable({}, fallback=None)).total
    assert (line.requests, line.calls, line.errors, line.retries) == (3, 6, 3, 3)


def _two_similar_models(db: Path) -> None:
    ledger = Ledger(db)
    for i in range(3):
        ledger.record(
            f"r{i}",
            [
                Call("openai:llama3.1-70b-instruct", 0, "ok", Usage(1280, 3), cost_usd=Decimal("0.000113")),
                Call("openai:llama3.1-405b-instruct", 0, "ok", Usage(1280, 3), cost_usd=Decimal("0.00387")),
            ],
            {"user": "u1"},
        )
    ledger.close()


def test_cli_spend_table_is_readable_in_80_columns(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    _two_similar_models(db)
    out = CliRunner().invoke(_app(), ["spend", "--db", str(db)], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    assert max(len(line) for line in out.output.splitlines()) <= 80
    # one line per model, never wrapped mid-word: a name too long is cut in its middle, so the two models keep their
    # distinct ends ("…70b-instruct", "…405b-instruct") and small costs keep their digits
    rows = [line for line in out.output.splitlines() if "0.000113" in line or "0.00387" in line]
    assert len(rows) == 2
    assert any("70b-instruct" in r for r in rows) and any("405b-instruct" in r for r in rows)
    assert "0.000113" in out.output and "0.00387" in out.output
    doc = json.loads(CliRunner().invoke(_app(), ["spend", "--db", str(db), "--json"]).output)
    assert {line["key"] for line in doc["lines"]} == {"openai:llama3.1-70b-instruct", "openai:llama3.1-405b-instruct"}


def test_cli_spend_refuses_a_missing_ledger_unless_create(tmp_path: Path) -> None:
    typo = tmp_path / "sub" / "typo.db"
    out = CliRunner().invoke(_app(), ["spend", "--db", str(typo)])
    assert out.exit_code == 2 and "no ledger at" in out.output and "--create" in out.output
    assert not typo.exists() and not typo.parent.exists()  # nothing created on the way
    made = CliRunner().invoke(_app(), ["spend", "--db", str(typo), "--create", "--json"])
    assert made.exit_code == 0 and typo.exists() and json.loads(made.output)["total"]["calls"] == 0


def test_cli_spend_bad_options_are_one_line_errors_not_tracebacks(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    _two_similar_models(db)
    for args, expected in (
        (["--by", "user"], "--by tag:user"),
        (["--since", "yesterday"], "ISO date"),
    ):
        out = CliRunner().invoke(_app(), ["spend", "--db", str(db), *args])
        assert out.exit_code == 2 and expected in out.output and "Traceback" not in out.output
        assert out.exception is None or isinstance(out.exception, SystemExit)


def _three_tier_ledger(db: Path) -> None:
    """Two cascades in one ledger; "qa" has three tiers and no request reached its third."""
    ledger = Ledger(db)
    cheap, mid, top = Decimal("0.0001"), Decimal("0.001"), Decimal("0.01")
    for i in range(4):
        calls = [Call("openai:gpt-4o-mini", 0, "ok", Usage(1000, 10), cost_usd=cheap)]
        if i == 0:
            calls.append(Call("openai:gpt-4o", 1, "ok", Usage(1000, 10), cost_usd=mid))
        ledger.record(f"qa{i}", calls, {"cascade": "qa"})
    ledger.record("m0", [Call("local:small", 0, "ok", Usage(500, 5), cost_usd=Decimal("0.00002"))], {"cascade": "math"})
    ledger.record("m1", [Call("local:big", 1, "ok", Usage(500, 5), cost_usd=top)], {"cascade": "math"})
    ledger.close()


def test_saving_is_per_cascade_against_its_configured_top_tier(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    _three_tier_ledger(db)
    ledger = Ledger(db)
    cascades = {"qa": [["openai:gpt-4o-mini"], ["openai:gpt-4o"], ["anthropic:claude-sonnet-4-5"]]}
    report = spend_report(ledger, cascades=cascades)
    ledger.close()
    by = {b.cascade: b for b in report.baselines}
    assert set(by) == {"qa", "math"}
    qa = by["qa"]
    # the configured top tier (never reached) priced from the table at each request's tokens, not tier 1 "seen"
    assert qa.configured and qa.models == ("anthropic:claude-sonnet-4-5",) and qa.estimated_requests == 4
    sonnet = PriceTable.default().cost("anthropic:claude-sonnet-4-5", Usage(1000, 10))
    assert sonnet is not None and qa.cost_usd == 4 * sonnet
    assert qa.saving_share is not None and qa.saving_share > 0.5
    # "math" is not in the configuration: its highest tier seen, its member priced at its recorded rate
    assert not by["math"].configured and by["math"].models == ("local:big",)
    assert by["math"].from_recorded_rate == ("local:big",) and by["math"].cost_usd == Decimal("0.02")
    md = report.to_markdown()
    assert "| qa | 4 |" in md and "cheaper than the top tier" in md and "X's $ per request" in md


def test_cli_spend_formats_and_config(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    _three_tier_ledger(db)
    config = tmp_path / "c.toml"
    config.write_text(
        '[cascades.qa]\nnormalizer = "choice"\ntiers = [{ members = ["openai:gpt-4o-mini"] }, '
        '{ members = ["openai:gpt-4o"] }, { members = ["local:big"], price = { input = 10, output = 30 } }]\n'
        '[providers.local]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n',
        encoding="utf-8",
    )
    config.write_text(
        config.read_text().replace(
            '{ members = ["local:big"], price = { input = 10, output = 30 } }',
            '{ members = [{ model = "local:big", price = { input = 10, output = 30 } }] }',
        )
    )
    runner = CliRunner()
    csv_out = runner.invoke(_app(), ["spend", "--db", str(db), "--format", "csv", "--by", "cascade"])
    assert csv_out.exit_code == 0, csv_out.output
    first = csv_out.output.splitlines()
    assert first[0].startswith("cascade,requests,calls") and first[1].startswith("math,2,2")
    doc = json.loads(runner.invoke(_app(), ["spend", "--db", str(db), "--json", "--config", str(config)]).output)
    qa = next(b for b in doc["always_top_tier_per_cascade"] if b["cascade"] == "qa")
    # local:big's own price from the configuration: 1000 in x 10 + 10 out x 30 per 1M tokens = 0.0103 per request
    assert qa["configured"] and qa["models"] == ["local:big"] and qa["cost_usd"] == pytest.approx(4 * 0.0103)
    table = runner.invoke(_app(), ["spend", "--db", str(db)], env={"COLUMNS": "80"})
    assert table.exit_code == 0 and max(len(line) for line in table.output.splitlines()) <= 80
    assert "costlier than the top tier" in table.output or "cheaper than the top tier" in table.output
    assert not re.search(r"\d[eE][-+]?\d", table.output)  # no exponent


def test_cli_price_several_models_list_and_default_mix() -> None:
    runner = CliRunner()
    out = runner.invoke(_app(), ["price", "openai:gpt-4o-mini", "openai:gpt-4o", "nope"])
    assert out.exit_code == 0, out.output
    assert "1,000 tokens in, 200 out (default mix)" in out.output and "no known price" in out.output
    last = json.loads(out.output.strip().splitlines()[-1])
    assert [x["model"] for x in last] == ["openai:gpt-4o-mini", "openai:gpt-4o", "nope"]
    mini = PriceTable.default().cost("openai:gpt-4o-mini", Usage(1000, 200))
    assert mini is not None and last[0]["cost_usd"] == pytest.approx(float(mini)) and last[2]["cost_usd"] is None
    listed = runner.invoke(_app(), ["price", "--list", "gpt-4o"])
    assert listed.exit_code == 0 and "gpt-4o-mini" in listed.output and "claude" not in listed.output
