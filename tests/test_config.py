"""The configuration file: validation with field paths, ${VAR} interpolation, and the Router it builds."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llm_cascade import AllTiersFailed, ConfigError, FakeBackend, Request, Router, Usage, register_provider
from llm_cascade.core.agreement import All, AnyOf, Confidence, Quorum, Unanimous, VoteShare
from llm_cascade.core.normalize import ChoiceLetter, JsonField, LabelSet, Number, Regex
from llm_cascade.core.types import Completion
from llm_cascade.resilience.limits import CircuitBroken, Throttled
from llm_cascade.resilience.retry import Retrying, RetryPolicy
from llm_cascade.serve.config import (
    build_components,
    build_router,
    build_routers,
    hash_key,
    load_config,
    parse_config,
    parse_normalizer,
    parse_rule,
)
from llm_cascade.testing import FaultSpec, RecordedServer

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "cascade.toml"

SIMPLE = """
[cascades.qa]
normalizer = "choice"
[[cascades.qa.tiers]]
members = [{model = "fake:a", options = {script = "B"}}, {model = "fake:b", options = {script = "(B)"}}]
[[cascades.qa.tiers]]
members = [{model = "fake:big", options = {script = "C"}}]
"""


def cfg_of(text: str, **env: str) -> Any:
    return parse_config(tomllib.loads(text), env=env)


def innermost(backend: Any) -> Any:
    """The backend inside the resilience wrappers."""
    while hasattr(backend, "inner"):
        backend = backend.inner
    return backend


async def test_a_file_builds_a_router_that_routes(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(SIMPLE)
    router = build_router(load_config(path), "qa")
    assert [[m.name for m in t.members] for t in router.tiers] == [["fake:a", "fake:b"], ["fake:big"]]
    result = await router.route("q")
    assert (result.answer, result.tier, result.accepted) == ("B", 0, True)


async def test_disagreement_escalates_to_the_next_tier() -> None:
    text = SIMPLE.replace('script = "(B)"', 'script = "A"')
    result = await build_router(cfg_of(text), "qa").route("q")
    assert (result.answer, result.tier) == ("C", 1)
    assert [c.model for c in result.calls] == ["fake:a", "fake:b", "fake:big"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("unanimous", Unanimous()),
        ({"quorum": 2}, Quorum(2)),
        ({"vote_share": 0.6}, VoteShare(0.6)),
        ({"confidence": 0.9}, Confidence(0.9)),
        ({"confidence": -0.1, "kind": "logprob"}, Confidence(-0.1, "logprob")),
        ({"all": ["unanimous", {"confidence": 0.8}]}, All((Unanimous(), Confidence(0.8)))),
        ({"any": [{"quorum": 2}, {"confidence": 0.99}]}, AnyOf((Quorum(2), Confidence(0.99)))),
    ],
)
def test_rule_specs(spec: Any, expected: Any) -> None:
    assert parse_rule(spec) == expected


def test_normalizer_specs() -> None:
    labels = parse_normalizer({"labels": ["positive", "negative"], "synonyms": {"pos": "positive"}})
    assert isinstance(labels, LabelSet) and labels("Pos.") == "positive"
    assert (
        isinstance(parse_normalizer({"choice": "E"}), ChoiceLetter) and parse_normalizer({"choice": "E"})("(E)") == "E"
    )
    rx = parse_normalizer({"regex": r"ANSWER=(\w+)", "upper": True})
    assert isinstance(rx, Regex) and rx("ANSWER=yes") == "YES"
    js = parse_normalizer({"json": "label", "then": "number"})
    assert isinstance(js, JsonField) and js('{"label": "4.0"}') == "4"
    assert isinstance(parse_normalizer("number"), Number)


def test_tier_settings_reach_the_router() -> None:
    text = """
    [cascades.x]
    normalizer = "number"
    timeout = 30
    [[cascades.x.tiers]]
    name = "cheap"
    members = ["fake:a", "fake:b", "fake:c"]
    rule = {quorum = 2}
    normalizer = {labels = ["yes", "no"]}
    timeout = 5
    on_error = "escalate"
    """
    router = build_router(cfg_of(text), "x")
    tier = router.tiers[0]
    assert (tier.name, tier.rule, tier.timeout, tier.on_error) == ("cheap", Quorum(2), 5, "escalate")
    assert isinstance(tier.normalizer, LabelSet)
    assert isinstance(router.normalizer, Number) and router.timeout == 30 and router.name == "router:x"


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ('[cascades.x]\ntiers = [{members = ["nocolon"]}]', "cascades.x.tiers[0].members[0].model", "provider:model"),
        ('[cascades.x]\ntiers = [{members = ["fake:a"], rule = {quorum = 0}}]', "cascades.x.tiers[0].rule", ">= 1"),
        ('[cascades.x]\ntiers = [{members = ["fake:a"], rule = "mostly"}]', "cascades.x.tiers[0].rule", "unknown"),
        (
            '[cascades.x]\ntiers = [{members = ["fake:a"], rule = {all = ["unanimous", {quorum = 1.5}]}}]',
            "cascades.x.tiers[0].rule",
            "all[1].quorum",
        ),
        ('[cascades.x]\ntiers = [{members = ["fake:a"], timeout = -1}]', "cascades.x.tiers[0].timeout", "greater"),
        ('[cascades.x]\ntiers = [{members = ["fake:a"], on_error = "panic"}]', "cascades.x.tiers[0].on_error", ""),
        ("[cascades.x]\ntiers = [{members = []}]", "cascades.x.tiers[0].members", "at least 1"),
        ("[cascades.x]\ntiers = []", "cascades.x.tiers", "at least 1"),
        ('[cascades.x]\nnormalizer = "vibes"\ntiers = [{members = ["fake:a"]}]', "cascades.x.normalizer", "unknown"),
        ('[cascades.x]\ntiers = [{members = ["fake:a"]}]\nbogus = 1', "cascades.x.bogus", "not permitted"),
        (
            '[cascades.x]\ntiers = [{members = [{model = "fake:a", api_key_env = "sk-live-123"}]}]',
            "cascades.x.tiers[0].members[0].api_key_env",
            "NAME of an environment variable",
        ),
        (
            '[providers.p]\napi_key_env = "sk proj"\n[cascades.x]\ntiers = [{members = ["fake:a"]}]',
            "providers.p.api_key_env",
            "NAME",
        ),
        ('[server]\nkeys = [{name = "a"}]\n[cascades.x]\ntiers = [{members = ["fake:a"]}]', "server.keys[0]", "one of"),
        (
            '[server]\nkeys = [{name = "a", sha256 = "abc"}]\n[cascades.x]\ntiers = [{members = ["fake:a"]}]',
            "server.keys[0]",
            "64 hex",
        ),
        ('[server]\nport = 70000\n[cascades.x]\ntiers = [{members = ["fake:a"]}]', "server.port", "less than"),
        (  # a key's tag named like one the library writes would turn its paid calls into shadow calls in reports
            '[server]\nkeys = [{name = "a", env = "K", tags = {shadow = "1"}}]\n'
            '[cascades.x]\ntiers = [{members = ["fake:a"]}]',
            "server.keys[0]",
            "tags.shadow",
        ),
        (
            '[server]\nkeys = [{name = "a", env = "K", tags = {key = "b"}}]\n'
            '[cascades.x]\ntiers = [{members = ["fake:a"]}]',
            "server.keys[0]",
            "tags.key",
        ),
        ("[cascades]", "cascades", "at least 1"),
    ],
)
def test_invalid_files_name_the_field(text: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg_of(text)
    assert info.value.field == field
    assert words in info.value.problem


def test_errors_found_when_building_name_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        build_router(cfg_of('[cascades.x]\ntiers = [{members = ["nosuch:model"]}]'), "x")
    assert info.value.field.startswith("cascades.x.tiers[0].members[0]")
    assert "unknown provider" in info.value.problem
    with pytest.raises(ConfigError) as info:
        build_router(cfg_of('[cascades.x]\ntiers = [{members = ["fake:a", "fake:a"]}]'), "x")
    assert info.value.field == "cascades.x.tiers[0].members" and "duplicate" in info.value.problem
    with pytest.raises(ConfigError, match="no cascade 'y'"):
        build_router(cfg_of(SIMPLE), "y")


def test_environment_interpolation() -> None:
    text = '[providers.p]\nbase_url = "${HOST}/v1"\ntype = "${KIND:-openai}"\n' + SIMPLE
    cfg = cfg_of(text, HOST="http://127.0.0.1:9")
    assert cfg.providers["p"].base_url == "http://127.0.0.1:9/v1"
    assert cfg.providers["p"].type == "openai"
    with pytest.raises(ConfigError) as info:
        cfg_of(text)
    assert info.value.field == "providers.p.base_url" and "HOST" in info.value.problem


def test_provider_settings_reach_the_backend() -> None:
    seen: list[dict[str, Any]] = []

    def factory(model: str, **options: Any) -> FakeBackend:
        seen.append({"model": model, **options})
        return FakeBackend(f"spy:{model}", "B")

    register_provider("spy", factory)
    text = """
    [providers.team]
    type = "spy"
    base_url = "http://h/v1"
    api_key_env = "TEAM_KEY"
    options = {timeout = 5}
    [cascades.x]
    [[cascades.x.tiers]]
    members = ["team:m1", {model = "team:m2", base_url = "http://other/v1", options = {timeout = 9}}]
    """
    build_router(cfg_of(text), "x")
    assert seen == [
        {"model": "m1", "timeout": 5, "base_url": "http://h/v1", "api_key_env": "TEAM_KEY", "name": "team:m1"},
        {"model": "m2", "timeout": 9, "base_url": "http://other/v1", "api_key_env": "TEAM_KEY", "name": "team:m2"},
    ]


def test_options_a_backend_rejects_are_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        build_router(cfg_of('[cascades.x]\ntiers = [{members = [{model = "fake:a", options = {colour = 1}}]}]'), "x")
    assert info.value.field == "cascades.x.tiers[0].members[0]" and "colour" in info.value.problem


def test_yaml_and_toml_give_the_same_config(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    (tmp_path / "c.yaml").write_text(
        "cascades:\n  qa:\n    normalizer: choice\n    tiers:\n"
        "      - members: [{model: 'fake:a', options: {script: B}}, {model: 'fake:b', options: {script: '(B)'}}]\n"
        "      - members: [{model: 'fake:big', options: {script: C}}]\n"
    )
    (tmp_path / "c.toml").write_text(SIMPLE)
    assert load_config(tmp_path / "c.yaml") == load_config(tmp_path / "c.toml")


def test_unreadable_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[cascades\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_server_keys_are_digests_never_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hash_key("s3cret")
    text = f"""
    [server]
    keys = [{{name = "a", env = "KEY_A", tags = {{team = "a"}}}}, {{name = "b", sha256 = "{digest.upper()}"}}]
    [cascades.x]
    tiers = [{{members = ["fake:a"]}}]
    """
    cfg = cfg_of(text)
    a, b = cfg.server.keys
    assert b.digest() == digest
    with pytest.raises(ConfigError) as info:
        a.digest()
    assert info.value.field == "server.keys.a.env" and "KEY_A" in info.value.problem
    monkeypatch.setenv("KEY_A", "another")
    assert a.digest() == hash_key("another")
    assert "another" not in repr(cfg) and "s3cret" not in repr(cfg)


async def test_prices_and_inline_overrides_price_every_call() -> None:
    text = (
        SIMPLE
        + """
    [prices]
    path = "default"
    [prices.overrides."fake:a"]
    input = "2"
    output = "10"
    source = "test"
    as_of = "2025-01"
    """
    )
    result = await build_router(cfg_of(text), "qa").route("q")
    by_model = {c.model: c.cost_usd for c in result.calls}
    assert by_model["fake:a"] == (10 * Decimal(2) + 1 * Decimal(10)) / 1_000_000
    assert by_model["fake:b"] is None  # no price: unknown, never 0
    assert result.cost_usd is None


def test_a_price_without_its_source_is_refused() -> None:
    text = SIMPLE + '[prices.overrides."fake:a"]\ninput = 1\noutput = 1\n'
    with pytest.raises(ConfigError) as info:
        build_components(cfg_of(text))
    assert info.value.field == "prices.overrides.fake:a" and "source" in info.value.problem


def test_relative_price_table_is_read_next_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(
        '{"models": {"fake:a": {"input": 1, "output": 1, "source": "t", "as_of": "2025"}}}'
    )
    (tmp_path / "c.toml").write_text(SIMPLE + '[prices]\npath = "p.json"\n')
    with pytest.raises(ConfigError) as info:
        build_components(load_config(tmp_path / "c.toml"))
    assert info.value.field == "prices.path" and "as_of" in info.value.problem


async def test_routers_of_one_file_share_one_ledger(tmp_path: Path) -> None:
    db = tmp_path / "spend.db"
    text = SIMPLE + SIMPLE.replace("cascades.qa", "cascades.qb") + f'[ledger]\nurl = "sqlite:///{db}"\n'
    cfg = cfg_of(text)
    comp = build_components(cfg)
    routers = build_routers(cfg, comp)
    assert routers["qa"].ledger is routers["qb"].ledger is comp.ledger
    await routers["qa"].route(Request.from_prompt("q"), tags={"team": "x"})
    await routers["qb"].route("q")
    totals = comp.ledger.totals()  # type: ignore[union-attr]
    assert (totals.requests, totals.calls) == (2, 4)
    assert comp.ledger.totals(tags={"team": "x"}).requests == 1  # type: ignore[union-attr]
    comp.close()


def test_the_example_builds_against_any_recorded_server_url() -> None:
    env = {"RECORDED_BASE_URL": "http://127.0.0.1:1/v1", "LLM_CASCADE_LEDGER_URL": ":memory:"}
    cfg = load_config(EXAMPLE, env=env)
    assert set(cfg.cascades) >= {"mmlu", "gsm8k"}
    router = build_router(cfg, "mmlu")
    names = [[m.name for m in t.members] for t in router.tiers]
    assert names == [["recorded:llama3.1-8b", "recorded:gpt-4o-mini"], ["recorded:gpt-4o"]]
    assert innermost(router.tiers[0].members[0]).base_url == "http://127.0.0.1:1/v1"
    assert router.prices is not None and router.prices.cost("recorded:gpt-4o", Usage(1000, 10)) is not None


def test_budgets_are_validated_and_built(tmp_path: Path) -> None:
    limit = '[budgets]\nlimits = [{usd = "-1", per = "day"}]\n'
    with pytest.raises(ConfigError) as info:
        cfg_of(SIMPLE + limit)
    assert info.value.field == "budgets.limits[0].usd"
    with pytest.raises(ConfigError) as info:
        build_components(cfg_of(SIMPLE + limit.replace('"-1"', '"5"')))
    assert info.value.field == "budgets.limits" and "ledger" in info.value.problem
    text = SIMPLE + limit.replace('"-1"', '"5"') + f'policy = "raise"\n[ledger]\nurl = "{tmp_path / "s.db"}"\n'
    comp = build_components(cfg_of(text))
    assert comp.budget is not None and comp.budget.policy == "raise"
    assert build_router(cfg_of(text), "qa", components=comp).budget is comp.budget
    comp.close()


# -- resilience: retries, limits and breakers from the file ----------------------------------------------------------


@pytest.fixture(scope="module")
def flaky() -> Iterator[RecordedServer]:
    """A recorded-answer server of its own (every model says "B"), so its faults never leak into other tests."""
    with RecordedServer(default="B") as server:
        yield server


def resilient(server: RecordedServer, extra: str = "", tier: str = "") -> str:
    return f"""
    [providers.rec]
    type = "openai"
    base_url = "{server.base_url}"
    {extra}
    [cascades.x]
    normalizer = "choice"
    [[cascades.x.tiers]]
    members = ["rec:m1"]
    {tier}
    [cascades.y]
    normalizer = "choice"
    [[cascades.y.tiers]]
    members = ["rec:m1"]
    """


async def close(*routers: Router) -> None:
    """Close the SDK clients of every member inside the test's own event loop."""
    for router in routers:
        for tier in router.tiers:
            for member in tier.members:
                await member.aclose()  # type: ignore[attr-defined]


class Sleeps:
    """An injected sleep: records each pause and returns at once."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)


async def test_a_configured_retry_answers_through_a_429(flaky: RecordedServer) -> None:
    flaky.set_fault("m1", FaultSpec("429", times=1, retry_after=7))
    try:
        sleeps = Sleeps()
        text = resilient(flaky, "retry = {attempts = 3}")
        cfg = cfg_of(text)
        router = build_router(cfg, "x", components=build_components(cfg, sleep=sleeps))
        before = flaky.counts["m1"]
        result = await router.route("q")
        assert result.answer == "B"
        assert [(c.outcome, c.attempt) for c in result.calls] == [("error", 1), ("ok", 2)]
        assert flaky.counts["m1"] == before + 2
        assert sleeps.pauses == [7.0]  # the server's Retry-After, not the back-off

        flaky.set_fault("m1", FaultSpec("429", times=1, retry_after=7))
        plain = build_router(cfg_of(resilient(flaky, "retry = false")), "x")  # one try: the 429 is the member's answer
        with pytest.raises(AllTiersFailed):
            await plain.route("q")
        assert flaky.counts["m1"] == before + 3
        await close(router, plain)
    finally:
        flaky.set_fault("m1", None)


async def test_a_tier_can_turn_retries_off_and_layers_merge_field_by_field(flaky: RecordedServer) -> None:
    text = "[resilience]\nretry = {attempts = 4, max_delay = inf, jitter = 0}\n" + resilient(
        flaky, "retry = {initial = 0.1}", "retry = false"
    )
    cfg = cfg_of(text)
    comp = build_components(cfg)
    x, y = build_router(cfg, "x", components=comp), build_router(cfg, "y", components=comp)
    (x_member,) = x.tiers[0].members
    (y_member,) = y.tiers[0].members
    assert not isinstance(x_member, Retrying)  # retry = false: one attempt, no wrapper
    assert isinstance(y_member, Retrying)
    assert y_member.policy == RetryPolicy(attempts=4, initial=0.1, jitter=0, max_delay=None)
    flaky.set_fault("m1", FaultSpec("503", times=1))
    try:
        with pytest.raises(AllTiersFailed):
            await x.route("q")
        await close(x, y)
    finally:
        flaky.set_fault("m1", None)


async def test_a_provider_limit_is_one_quota_for_every_cascade() -> None:
    in_flight, peak = [0], [0]

    class Slow:
        supports_logprobs = False

        def __init__(self, model: str, **_: Any) -> None:
            self.name = f"capped:{model}"

        async def complete(self, request: Request) -> Completion:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            for _ in range(5):
                await asyncio.sleep(0)
            in_flight[0] -= 1
            return Completion("B", self.name)

    register_provider("capped", Slow)
    text = """
    [providers.capped]
    limit = {concurrency = 2}
    [cascades.a]
    normalizer = "choice"
    tiers = [{members = ["capped:m1", "capped:m2"]}]
    [cascades.b]
    normalizer = "choice"
    tiers = [{members = ["capped:m3"]}]
    """
    cfg = cfg_of(text)
    routers = build_routers(cfg, build_components(cfg))
    # retries are on by default: Retrying(Throttled(member))
    members = [m.inner if isinstance(m, Retrying) else m for r in routers.values() for m in r.tiers[0].members]
    assert all(isinstance(m, Throttled) for m in members)
    assert len({id(m.limit) for m in members if isinstance(m, Throttled)}) == 1  # one shared ProviderLimit
    results = await asyncio.gather(*(routers["ab"[i % 2]].route(f"q{i}") for i in range(12)))
    assert all(r.answer == "B" for r in results)
    assert peak[0] == 2
    uncapped = cfg_of(text.replace("limit = {concurrency = 2}", ""))
    peak[0] = 0
    routers = build_routers(uncapped, build_components(uncapped))
    await asyncio.gather(*(routers["ab"[i % 2]].route(f"q{i}") for i in range(12)))
    assert peak[0] > 2  # the cap, not the test, bounded the first run


async def test_a_breaker_opens_for_a_model_in_every_cascade_and_costs_no_request(flaky: RecordedServer) -> None:
    now = [1000.0]
    text = "[resilience]\nbreaker = {failures = 2, cooldown = 30}\n" + resilient(flaky)
    cfg = cfg_of(text)
    comp = build_components(cfg, clock=lambda: now[0])
    x, y = build_router(cfg, "x", components=comp), build_router(cfg, "y", components=comp)
    flaky.set_fault("m1", "503")
    try:
        before = flaky.counts["m1"]
        for router in (x, y, x):
            with pytest.raises(AllTiersFailed) as info:
                await router.route("q")
        assert flaky.counts["m1"] == before + 2  # the third call failed fast, in cascade x, opened by x and y
        assert "CircuitOpenError" in (info.value.calls[-1].error or "")
        flaky.set_fault("m1", None)
        now[0] += 31  # the cool-down passes: one probe goes through and closes the circuit
        assert (await y.route("q")).answer == "B"
        assert flaky.counts["m1"] == before + 3
        await close(x, y)
    finally:
        flaky.set_fault("m1", None)
    off = cfg_of(text.replace('type = "openai"', 'type = "openai"\nbreaker = false'))
    (member,) = build_router(off, "x").tiers[0].members
    assert not isinstance(member, CircuitBroken)


def test_the_example_retries_and_caps_its_provider() -> None:
    env = {"RECORDED_BASE_URL": "http://127.0.0.1:1/v1", "LLM_CASCADE_LEDGER_URL": ":memory:"}
    router = build_router(load_config(EXAMPLE, env=env), "mmlu")
    for tier in router.tiers:
        for m in tier.members:
            assert isinstance(m, Retrying) and isinstance(m.inner, Throttled)
    cheap, strong = (t.members[0] for t in router.tiers)
    assert isinstance(cheap, Retrying) and isinstance(strong, Retrying)
    assert strong.policy.attempts > cheap.policy.attempts  # the last tier has no fallback: it tries harder


@pytest.mark.parametrize(
    ("section", "field", "words"),
    [
        ("[resilience]\nretry = {attempts = 0}", "resilience.retry.attempts", "integer >= 1"),
        ("[resilience]\nretry = {attempts = true}", "resilience.retry.attempts", "number"),
        ("[resilience]\nretry = {jitter = 2}", "resilience.retry.jitter", "in [0, 1]"),
        ("[resilience]\nretry = {multiplier = 0.5}", "resilience.retry.multiplier", ">= 1"),
        ("[resilience]\nretry = {max_delay = -1}", "resilience.retry.max_delay", "positive number"),
        ("[resilience]\nretry = {tries = 3}", "resilience.retry.tries", "unknown retry field"),
        ("[resilience]\nbreaker = {cooldown = -1}", "resilience.breaker.cooldown", "greater than 0"),
        ("[resilience]\nbreaker = {failures = 0}", "resilience.breaker.failures", "greater than or equal to 1"),
        ('[resilience.limits."*"]\nconcurrency = 0', "resilience.limits.*.concurrency", "greater than or equal to 1"),
        ('[resilience.limits.""]\nrate = 5', "resilience.limits", "empty key"),
        ("[providers.p]\nlimit = {rate = 1.5}", "providers.p.limit.rate", "integer"),
        ("[providers.p]\nlimit = {period = 0}", "providers.p.limit.period", "greater than 0"),
        ('[providers.p]\nretry = {attempt_timeout = "soon"}', "providers.p.retry.attempt_timeout", "number"),
        (
            "[providers.p]\nlimit = {rate = 5}\n[resilience.limits.p]\nrate = 9",
            "providers.p.limit",
            "one place",
        ),
    ],
)
def test_bad_resilience_values_name_the_field(section: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg_of(section + "\n" + SIMPLE)
    assert info.value.field == field
    assert words in info.value.problem


def test_a_bad_tier_retry_names_the_tier() -> None:
    with pytest.raises(ConfigError) as info:
        cfg_of('[cascades.x]\ntiers = [{members = ["fake:a"], retry = {attempts = 1.5}}]')
    assert info.value.field == "cascades.x.tiers[0].retry.attempts"


def test_retry_values_from_the_environment_are_validated_too() -> None:
    text = '[resilience]\nretry = {attempts = "${RETRIES}"}\n' + SIMPLE
    assert cfg_of(text, RETRIES="5").resilience.retry == {"attempts": 5}  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as info:
        cfg_of(text, RETRIES="many")
    assert info.value.field == "resilience.retry.attempts"


def test_first_token_timeout_is_on_by_default_and_off_by_name() -> None:
    assert build_router(cfg_of(SIMPLE), "qa").tiers[0].first_token_timeout == "default"
    off = SIMPLE.replace(
        'normalizer = "choice"\n[[cascades.qa.tiers]]\n',
        'normalizer = "choice"\n[[cascades.qa.tiers]]\nfirst_token_timeout = "off"\n',
        1,
    )
    assert build_router(cfg_of(off), "qa").tiers[0].first_token_timeout is None
    two = off.replace('"off"', "2.5")
    assert build_router(cfg_of(two), "qa").tiers[0].first_token_timeout == 2.5
    with pytest.raises(ConfigError, match="first_token_timeout"):
        build_router(cfg_of(off.replace('"off"', '"soon"')), "qa")
