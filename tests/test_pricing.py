"""The price table: recorded costs reproduced exactly, aliases, cached tokens, fees, validation, litellm fallback."""

from __future__ import annotations

import gzip
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from llm_cascade import Usage
from llm_cascade.core.errors import PriceError
from llm_cascade.spend.pricing import PriceEntry, PriceTable, litellm_map_path, read_litellm_map

OK = {"input": "1", "output": "2", "source": "test", "as_of": "2026-01-01"}


@pytest.mark.data
@pytest.mark.parametrize("bench", ["mmlu", "medmcqa"])
def test_recorded_costs_are_reproduced_to_1e9(data_dir: Path, bench: str) -> None:
    table = PriceTable.default(fallback=None)
    checked = 0
    with gzip.open(data_dir / "rational" / f"{bench}_train.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            for model, rec in row["models"].items():
                cost = table.cost(f"fireworks:{model}", Usage(rec["tokens_in"], rec["tokens_out"]))
                assert cost is not None, model
                assert abs(cost - Decimal(repr(rec["cost_usd"]))) <= Decimal("1e-9"), (row["id"], model)
                checked += 1
    assert checked >= 9 * 285


@pytest.mark.data
def test_every_rational_model_is_priced_as_the_readme_confirms(data_dir: Path) -> None:
    confirmed = json.loads((data_dir / "rational" / "model_prices.json").read_text())
    table = PriceTable.default(fallback=None)
    for model, p in confirmed.items():
        entry = table.entry(model)
        assert (entry.input, entry.output) == (
            Decimal(repr(p["usd_per_1M_input"])),
            Decimal(repr(p["usd_per_1M_output"])),
        )
        assert "rational-llm-cascades" in entry.source


@pytest.mark.data
def test_zeroeval_models_priced_from_the_litellm_map_match_it(data_dir: Path) -> None:
    with gzip.open(data_dir / "zeroeval-gsm8k" / "gsm.jsonl.gz", "rt") as f:
        models = sorted(json.loads(f.readline())["models"])
    table = PriceTable.default(fallback=None)
    path = litellm_map_path()
    bundled = json.loads(path.read_text()) if path else None
    priced = [m for m in models if m in table]
    assert len(priced) >= 25
    for model in priced:
        entry = table.entry(model)
        key = re.search(r"key '([^']+)'", entry.source)
        if key is None or bundled is None:
            continue
        spec = bundled[key.group(1)]
        assert entry.input == Decimal(repr(spec["input_cost_per_token"])) * 1_000_000, model
        assert entry.output == Decimal(repr(spec["output_cost_per_token"])) * 1_000_000, model


@pytest.mark.parametrize(
    "name", ["gpt-4o", "openai:gpt-4o", "openai/gpt-4o-2024-08-06", "OpenAI:GPT-4o-2024-08-06", "litellm:openai/gpt-4o"]
)
def test_aliases_and_provider_prefixes(name: str) -> None:
    table = PriceTable.default(fallback=None)
    assert table.entry(name) is table.entry("gpt-4o")
    assert table.entry("gpt-4o-2024-05-13") is not table.entry("gpt-4o")  # a different snapshot, a different price


def test_cached_tokens_are_part_of_input_and_never_counted_twice() -> None:
    table = PriceTable({"m": {**OK, "cached_input": "0.25"}}, fallback=None)
    full = table.cost("m", Usage(1000, 100))
    cached = table.cost("m", Usage(1000, 100, cached_tokens=400))
    assert full == Decimal("0.0012")  # 1000 x 1 + 100 x 2, per 1M
    assert cached == Decimal("0.0012") - 400 * (Decimal(1) - Decimal("0.25")) / 1_000_000
    assert table.cost("m", Usage(1000, 0, cached_tokens=5000)) == Decimal(1000) * Decimal("0.25") / 1_000_000
    no_discount = PriceTable({"m": OK}, fallback=None)
    assert no_discount.cost("m", Usage(1000, 100, 400)) == full


def test_per_request_fee_once_per_billed_call() -> None:
    table = PriceTable({"m": {**OK, "per_request": "0.005"}}, fallback=None)
    assert table.cost("m", Usage(1_000_000, 0)) == Decimal("1.005")
    assert table.cost("m", Usage(0, 0)) == 0  # rejected before the model ran: nothing billed


def test_unknown_model_is_none_or_an_error_in_strict_mode() -> None:
    assert PriceTable({"m": OK}, fallback=None).cost("nope", Usage(1, 1)) is None
    with pytest.raises(PriceError, match="'nope'"):
        PriceTable({"m": OK}, strict=True, fallback=None).cost("nope", Usage(1, 1))


def test_litellm_map_is_the_fallback_for_missing_models() -> None:
    if litellm_map_path() is None:
        pytest.skip("litellm is not installed")
    bare = PriceTable({}, fallback=None)
    table = PriceTable({})
    assert bare.lookup("gpt-4.1") is None
    entry = table.entry("openai:gpt-4.1")
    assert "litellm" in entry.source and entry.input > 0
    assert table.cost("openai:gpt-4.1", Usage(1_000_000, 0)) == entry.input
    raw = json.loads(Path(litellm_map_path() or "").read_text())["gpt-4.1"]
    assert entry.input == Decimal(repr(raw["input_cost_per_token"])) * 1_000_000
    assert read_litellm_map(Path("/nonexistent/map.json")) == {}


def test_local_compute_is_priced_per_hour() -> None:
    table = PriceTable(fallback=None)
    table.add("hf:distilbert", PriceEntry.local("2.40", source="H100 on-demand", as_of="2026-11-25"))
    assert table.cost("hf:distilbert", Usage(100, 1), seconds=1.5) == Decimal("0.001")
    assert table.cost("hf:distilbert", Usage(100, 1)) == 0
    assert PriceTable({"gpu": {"per_hour": "3.6", "source": "s", "as_of": "2026-11"}}).cost(
        "gpu", Usage(), seconds=10
    ) == Decimal("0.01")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": 1, "output": 1, "as_of": "2026-01-01"}, r"'bad'.*'source' is required"),
        ({**OK, "source": ""}, r"'bad'.*'source' is required"),
        ({**OK, "input": -1}, r"'bad'.*'input' must be a finite number >= 0"),
        ({**OK, "output": "abc"}, r"'bad'.*'output' must be a number"),
        ({**OK, "cached_input": "NaN"}, r"'bad'.*'cached_input'"),
        ({**OK, "as_of": "yesterday"}, r"'bad'.*'as_of'"),
        ({"output": 1, "source": "s", "as_of": "2026-01"}, r"'bad'.*'input' is required"),
        ({**OK, "inptu": 1}, r"'bad'.*unknown field.*inptu"),
        ({**OK, "per_request": True}, r"'bad'.*'per_request'"),
        ("free", r"'bad'.*must be an object"),
    ],
)
def test_bad_entries_fail_at_load_naming_model_and_field(entry: Any, message: str) -> None:
    with pytest.raises(PriceError, match=message):
        PriceTable.from_json(json.dumps({"models": {"ok": OK, "bad": entry}}))


def test_bad_table_files(tmp_path: Path) -> None:
    with pytest.raises(PriceError, match="not valid JSON"):
        PriceTable.from_json("{")
    with pytest.raises(PriceError, match="'models'"):
        PriceTable.from_json("[]")
    with pytest.raises(PriceError, match="cannot read"):
        PriceTable.load(tmp_path / "missing.json")
    with pytest.raises(PriceError, match="alias 'x' already names 'a'"):
        PriceTable({"a": {**OK, "aliases": ["x"]}, "b": {**OK, "aliases": ["x"]}})
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"models": {"m": OK}}))
    assert PriceTable.load(path, fallback=None).models() == ["m"]


def test_shipped_table_is_valid_and_every_entry_is_sourced() -> None:
    table = PriceTable.default(fallback=None)
    assert len(table) >= 30
    for name in table.models():
        entry = table.entry(name)
        assert entry.source and re.match(r"^\d{4}-\d{2}", entry.as_of), name


def _decimal_cost(entry: PriceEntry, usage: Usage) -> Decimal:
    """The cost as plain Decimal arithmetic (what PriceEntry.cost's integer path must reproduce exactly)."""
    cached = min(max(usage.cached_tokens, 0), max(usage.input_tokens, 0))
    fresh = max(usage.input_tokens, 0) - cached
    cached_price = entry.input if entry.cached_input is None else entry.cached_input
    total = (fresh * entry.input + cached * cached_price + max(usage.output_tokens, 0) * entry.output) / Decimal(10**6)
    if usage.input_tokens > 0 or usage.output_tokens > 0:
        total += entry.per_request
    return total


def test_integer_cost_path_is_the_decimal_arithmetic_digit_for_digit() -> None:
    """The integer path gives the same Decimal (value and exponent, so the ledger's cost_usd text is unchanged) for
    prices of any precision, fees, cached tokens and token counts too large for the path (which falls back)."""
    import random

    rng = random.Random(7)
    prices = ["0", "0.15", "0.6", "2", "15", "0.075", "1.25", "0.000001", "3.5E+1", "0.10", "1e-7", "100.000"]
    checked = 0
    for _ in range(400):
        entry = PriceEntry(
            Decimal(rng.choice(prices)),
            Decimal(rng.choice(prices)),
            "test",
            "2026-01",
            cached_input=rng.choice([None, Decimal(rng.choice(prices))]),
            per_request=Decimal(rng.choice(["0", "0.00", "0.001", "0E+2", "1"])),
        )
        for _ in range(20):
            usage = Usage(
                rng.choice([0, rng.randint(1, 5000), rng.randint(0, 10**24)]),
                rng.choice([0, rng.randint(1, 500)]),
                rng.choice([0, rng.randint(0, 6000)]),
            )
            got, want = entry.cost(usage), _decimal_cost(entry, usage)
            assert got.as_tuple() == want.as_tuple(), (entry, usage)
            checked += 1
    assert checked == 8000
