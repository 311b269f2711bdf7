"""pricing/build.py: the shipped table is exactly the build of the sources; bad sources fail naming the field; the
freshness check flags disagreeing and stale prices and always exits 0."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from _scripts import load_script

from llm_cascade.spend.pricing import PriceTable

REPO = Path(__file__).resolve().parent.parent


def _build_module() -> ModuleType:
    return load_script("pricing_build", "pricing/build.py")


build = _build_module()


def test_shipped_json_is_the_build_output() -> None:
    shipped = (REPO / "llm_cascade" / "data" / "prices.json").read_text(encoding="utf-8")
    assert shipped == build.render(build.read_sources()), "run: python pricing/build.py"


def test_every_source_entry_is_in_the_shipped_table_with_its_provider() -> None:
    table = PriceTable.default(fallback=None)
    sources = build.read_sources()
    assert len(table) == len(sources)
    for src in sources:
        entry = table.lookup(src.name)
        assert entry is not None and entry == src.entry
        assert entry.provider == src.file.removesuffix(".toml")


def test_models_of_the_eval_data_that_have_a_list_price_are_priced() -> None:
    table = PriceTable.default(fallback=None)
    for model in ("gemini-1.5-flash", "gemini-1.5-pro"):
        assert table.lookup(model) is not None, model
    # A free experimental preview has no list price: unknown, never 0.
    assert table.lookup("gemini-1.5-flash-exp-0827") is None


def _write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


GOOD = """provider = "acme"
[models."m1"]
input = 1.5
output = 2
source = "acme price page"
as_of = "2020-01-01"
litellm = "acme/m1"
"""


def test_build_writes_prices_as_decimal_strings(tmp_path: Path) -> None:
    _write(tmp_path, "acme.toml", GOOD)
    doc = json.loads(build.render(build.read_sources(tmp_path)))
    assert doc["models"]["m1"] == {
        "input": "1.5",
        "output": "2",
        "provider": "acme",
        "source": "acme price page",
        "as_of": "2020-01-01",
    }


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (GOOD.replace("input = 1.5", 'input = "cheap"'), "'input'"),
        (GOOD.replace('as_of = "2020-01-01"', 'as_of = "last week"'), "'as_of'"),
        (GOOD.replace('source = "acme price page"\n', ""), "'source'"),
        (GOOD.replace("output = 2", "output = 2\ncolour = 1"), "colour"),
        (GOOD.replace('litellm = "acme/m1"', "litellm = 3"), "models.m1.litellm"),
        (GOOD + '[models."m2"]\ninput = 1\noutput = 1\nsource = "s"\nas_of = "2020-01"\naliases = ["M1"]\n', "M1"),
    ],
)
def test_a_bad_source_fails_naming_file_and_field(tmp_path: Path, text: str, named: str) -> None:
    _write(tmp_path, "acme.toml", text)
    with pytest.raises(build.SourceError) as err:
        build.read_sources(tmp_path)
    assert "acme.toml" in str(err.value) and named in str(err.value)


def test_a_model_defined_in_two_files_fails(tmp_path: Path) -> None:
    _write(tmp_path, "acme.toml", GOOD)
    _write(tmp_path, "other.toml", GOOD.replace("acme", "other"))
    with pytest.raises(build.SourceError, match="already defined in acme.toml"):
        build.read_sources(tmp_path)


def _litellm_map(tmp_path: Path, entries: dict[str, dict[str, float]]) -> Path:
    path = tmp_path / "map" / "model_prices_and_context_window_backup.json"
    path.parent.mkdir()
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_check_flags_disagreement_staleness_and_absence(tmp_path: Path) -> None:
    _write(tmp_path, "acme.toml", GOOD + '[models."m2"]\ninput = 1\noutput = 1\nsource = "s"\nas_of = "2025-06"\n')
    from llm_cascade.spend.pricing import read_litellm_map

    bundled = read_litellm_map(
        _litellm_map(tmp_path, {"acme/m1": {"input_cost_per_token": 1.5e-06, "output_cost_per_token": 3e-06}})
    )
    findings = build.check(build.read_sources(tmp_path), bundled, today=dt.date(2025, 7, 1), max_age_days=365)
    kinds = {(f.kind, f.model) for f in findings}
    assert ("disagrees", "m1") in kinds  # output 2 here vs 3 there; input agrees
    assert ("stale", "m1") in kinds and ("stale", "m2") not in kinds
    assert ("not in litellm", "m2") in kinds
    detail = next(f.detail for f in findings if f.kind == "disagrees")
    assert "output 2 here vs 3 in litellm" in detail and "input" not in detail


def test_check_script_exits_0_and_prints_the_lists(tmp_path: Path) -> None:
    path = _litellm_map(tmp_path, {"gpt-4o": {"input_cost_per_token": 9e-06, "output_cost_per_token": 1e-05}})
    out = subprocess.run(
        [sys.executable, str(REPO / "pricing" / "build.py"), "--check", "--litellm-map", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "disagrees: 1" in out.stdout and "gpt-4o: input 2.5 here vs 9 in litellm" in out.stdout
    assert "stale:" in out.stdout and "not in litellm:" in out.stdout
    assert "differs from the sources" not in out.stdout  # the shipped table is the build's output
