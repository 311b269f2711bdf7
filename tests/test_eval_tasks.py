"""Task specs (evals/tasks/*.toml), the importers reading them, and `llm-cascade eval` live and replayed."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _scripts import load_script

from llm_cascade.core.errors import ConfigError
from llm_cascade.evals.importers import RecordedLayout, rational_record
from llm_cascade.evals.records import RecordError, load_records
from llm_cascade.evals.tasks import load_examples, load_task
from llm_cascade.serve.config import load_config
from llm_cascade.spend.ledger import Ledger

REPO = Path(__file__).resolve().parent.parent
TASKS = sorted((REPO / "evals" / "tasks").glob("*.toml"))


def _cli(args: list[str]) -> tuple[int, str]:
    from typer.testing import CliRunner

    from llm_cascade.serve.cli import _app

    result = CliRunner().invoke(_app(), args)
    return result.exit_code, result.output


def _last_json(output: str) -> dict[str, Any]:
    return dict(json.loads(output.strip().splitlines()[-1]))


@pytest.mark.parametrize("path", TASKS, ids=[p.stem for p in TASKS])
def test_every_shipped_task_and_its_cascade_load(path: Path) -> None:
    spec = load_task(path)
    assert spec.name == path.stem
    assert spec.cascade is not None and spec.cascade.is_file()
    cfg = load_config(spec.cascade)
    assert spec.name in cfg.cascades or len(cfg.cascades) == 1
    spec.normalizer()  # resolves


def test_the_project_sets_all_have_a_task() -> None:
    names = {p.stem for p in TASKS}
    assert {"mmlu", "medmcqa", "gsm8k", "triviaqa", "truthfulqa", "zeroeval_gsm8k", "mot_date", "sentiment"} <= names


GOOD = """
name = "t"
[data]
format = "rows"
path = "x.jsonl"
[answer]
gold_field = "gold"
normalizer = "number"
"""


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD.replace('format = "rows"', 'format = "csvish"'), "data.format"),
        (GOOD.replace('path = "x.jsonl"\n', ""), "data.path"),
        (GOOD.replace('normalizer = "number"', 'normalizer = "numbr"'), "answer.normalizer"),
        (GOOD + 'metric = "bleu"\n', "answer.metric"),
        (GOOD + "choices = 40\n", "answer.choices"),
        (GOOD + "colour = 1\n", "answer"),
        (GOOD.replace('name = "t"', 'name = "t"\nowner = "me"'), "<top level>"),
        (GOOD.replace('path = "x.jsonl"', 'path = "x.jsonl"\nlimit = 0'), "data.limit"),
        (GOOD.replace('path = "x.jsonl"', "path = 3"), "data.path"),
        (GOOD.replace('format = "rows"', 'format = "mot"'), "data.files"),
    ],
)
def test_a_bad_spec_fails_naming_the_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_task(path)
    assert err.value.field == f"t.toml: {field}"


def test_rows_are_read_through_datasets_and_rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CASCADE_DATA", str(tmp_path))
    rows = [{"id": "a", "q": "2+2?", "gold": "4.0"}, {"id": "b", "q": "3+3?", "gold": "6"}]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    spec_path = tmp_path / "t.toml"
    spec_path.write_text(GOOD.replace("[answer]", '[prompt]\ntemplate = "Q: {q}"\n[answer]'), encoding="utf-8")
    examples = load_examples(load_task(spec_path))
    assert [(e.id, e.prompt, e.gold) for e in examples] == [("a", "Q: 2+2?", "4"), ("b", "Q: 3+3?", "6")]
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("[answer]", '[prompt]\ntemplate = "{question}"\n[answer]'), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"prompt\.template.*'question'"):
        load_examples(load_task(bad))


def test_a_local_dataset_folder_is_read_with_its_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CASCADE_DATA", str(tmp_path))
    (tmp_path / "d").mkdir()
    rows = [{"id": "1", "q": "first?", "gold": "b"}, {"id": "2", "q": "second?", "gold": "(C)"}]
    (tmp_path / "d" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    spec_path = tmp_path / "t.toml"
    text = GOOD.replace('format = "rows"\npath = "x.jsonl"', 'format = "dataset"\npath = "d"\nsplit = "test"')
    text = text.replace("[answer]", '[prompt]\ntemplate = "{q}"\n[answer]')
    spec_path.write_text(text.replace('normalizer = "number"', 'normalizer = "choice"\nchoices = 4'), encoding="utf-8")
    examples = load_examples(load_task(spec_path))
    assert [(e.id, e.prompt, e.gold) for e in examples] == [("1", "first?", "B"), ("2", "second?", "C")]


def test_missing_data_is_an_error_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CASCADE_DATA", str(tmp_path))
    with pytest.raises(RecordError, match=str(tmp_path / "rational" / "mmlu_train.jsonl.gz")):
        load_examples(load_task(REPO / "evals" / "tasks" / "mmlu.toml"))


@pytest.mark.data
@pytest.mark.parametrize("bench", ["mmlu", "medmcqa", "gsm8k", "triviaqa", "truthfulqa"])
def test_importing_with_the_spec_matches_the_recorded_files(data_dir: Path, bench: str) -> None:
    spec = load_task(REPO / "evals" / "tasks" / f"{bench}.toml")
    from_spec = [e.record for e in load_examples(spec)]
    assert from_spec == load_records(data_dir / "rational" / f"{bench}_train.jsonl.gz")


@pytest.mark.data
def test_the_spec_not_the_benchmark_name_decides_how_rows_are_read(data_dir: Path) -> None:
    spec = load_task(REPO / "evals" / "tasks" / "gsm8k.toml")
    row = json.loads(__import__("gzip").open(data_dir / "rational" / "gsm8k_train.jsonl.gz", "rt").readline())
    answer_only = rational_record(row, spec.layout())
    full = rational_record(row, dataclasses.replace(spec.layout(), cost_field="cost_usd"))
    model = next(iter(row["models"]))
    assert answer_only.models[model].cost_usd == row["models"][model]["cost_answer_only_usd"]
    assert full.models[model].cost_usd == row["models"][model]["cost_usd"]
    as_text = rational_record(row, RecordedLayout(None, cost_field="cost_usd"))
    assert as_text.models[model].answer == row["models"][model]["answer"]


def _mmlu_example() -> Any:
    return load_script("mmlu_cascade_example", "examples/mmlu_cascade.py")


@pytest.mark.data
@pytest.mark.slow
def test_replay_reproduces_the_mmlu_example(data_dir: Path, tmp_path: Path) -> None:
    code, output = _cli(["eval", str(REPO / "evals" / "tasks" / "mmlu.toml"), "--replay", "--out", str(tmp_path)])
    assert code == 0, output
    got = _last_json(output)
    expected = _mmlu_example().main(["--data", str(data_dir)])
    assert got["n"] == expected["n"] == 285
    assert got["accuracy"] == expected["accuracy"]
    assert got["escalation_rate"] == expected["escalation_rate"]
    assert got["cost_per_request_usd"] == pytest.approx(expected["cost_per_request_usd"], rel=1e-12)
    # The example's HTTP calls include its baseline (the top model alone, once per question).
    assert got["calls"] == expected["http_calls"] - expected["n"]
    report = json.loads((tmp_path / "eval_report.json").read_text())
    assert {s["model"] for s in report["singles"]} == {"gpt-4o-mini", "qwen2.5-72b-instruct", "llama3.1-70b", TOP}
    top = next(s for s in report["singles"] if s["model"] == TOP)
    assert top["accuracy"] == expected["top_alone_accuracy"]
    # The example cascade is not calibrated on these questions: where one of its models alone beats it, it says so.
    best = max(report["singles"], key=lambda s: s["accuracy"])
    costlier = report["cost_ratio_vs_best_single"] < 1
    assert any(f.startswith(f"COSTLIER than {best['model']}") for f in report["flags"]) == costlier
    less = report["accuracy"] < best["accuracy"]
    assert any(f.startswith(f"LESS ACCURATE than {best['model']}") for f in report["flags"]) == less
    assert (tmp_path / "eval_report.md").read_text().startswith("### mmlu")
    assert (tmp_path / "eval_frontier.png").stat().st_size > 0


TOP = "llama3.1-405b"


@pytest.mark.data
def test_replay_of_mot_samples_matches_the_recorded_votes(data_dir: Path, tmp_path: Path) -> None:
    """A non-rational format replays the answers its importer read: the quorum-4-of-5 vote then gpt-4's answer."""
    task = REPO / "evals" / "tasks" / "mot_date.toml"
    code, output = _cli(["eval", str(task), "--replay", "--limit", "40", "--out", str(tmp_path)])
    assert code == 0, output
    got = _last_json(output)
    records = [e.record for e in load_examples(dataclasses.replace(load_task(task), limit=40))]
    correct = escalated = 0
    for r in records:
        assert r is not None
        votes = Counter(r.models[f"gpt-3.5-turbo#{i}"].answer for i in range(5))
        votes.pop(None, None)
        answer, count = votes.most_common(1)[0] if votes else (None, 0)
        if count < 4:
            escalated += 1
            answer = r.models["gpt-4#0"].answer or answer
        correct += answer == r.gold
    assert got["n"] == 40
    assert got["escalation_rate"] == escalated / 40
    assert got["accuracy"] == correct / 40
    assert got["cost_per_request_usd"] is None  # MoT recorded no prices: unknown, never 0


@pytest.mark.data
def test_replay_refuses_members_it_cannot_answer(data_dir: Path, tmp_path: Path) -> None:
    cascade = tmp_path / "c.toml"
    cascade.write_text(
        '[cascades.mmlu]\nnormalizer = "choice"\n[[cascades.mmlu.tiers]]\nmembers = ["openai:gpt-4o-mini"]\n',
        encoding="utf-8",
    )
    task = str(REPO / "evals" / "tasks" / "mmlu.toml")
    code, output = _cli(["eval", task, "--cascade", str(cascade), "--replay", "--limit", "3", "--out", str(tmp_path)])
    assert code == 2 and "recorded:<model>" in output


@pytest.mark.data
def test_live_run_goes_through_the_response_cache(data_dir: Path, tmp_path: Path, recorded_server: Any) -> None:
    """Live mode against a running OpenAI-compatible server: the second run is answered from the SQLite cache."""
    cascade = tmp_path / "c.toml"
    cascade.write_text(
        (REPO / "evals" / "cascades" / "mmlu.toml")
        .read_text()
        .replace("${RECORDED_BASE_URL:-http://127.0.0.1:8001/v1}", recorded_server.base_url),
        encoding="utf-8",
    )
    task = str(REPO / "evals" / "tasks" / "mmlu.toml")
    args = ["eval", task, "--cascade", str(cascade), "--limit", "20", "--out", str(tmp_path / "out")]
    recorded_server.reset()
    code, first_out = _cli(args)
    assert code == 0, first_out
    served = sum(recorded_server.counts.values())
    first = json.loads((tmp_path / "out" / "eval_report.json").read_text())
    assert first["mode"] == "live" and served == first["calls"] > 0
    assert (first["response_cache"]["misses"], first["response_cache"]["hits"]) == (20, 0)
    code, second_out = _cli(args)
    assert code == 0, second_out
    second = json.loads((tmp_path / "out" / "eval_report.json").read_text())
    assert sum(recorded_server.counts.values()) == served  # nothing new reached the server
    assert (second["response_cache"]["hits"], second["response_cache"]["misses"]) == (20, 0)
    # Scored and priced by the calls that made each answer: the configuration's figures, answered now or before ...
    assert (second["accuracy"], second["cost_per_request_usd"]) == (first["accuracy"], first["cost_per_request_usd"])
    assert second["calls"] == first["calls"]
    assert second["response_cache"]["saved_usd"] == pytest.approx(20 * first["cost_per_request_usd"])
    # ... but the hits cost nothing: the ledger bills them at 0, with what each saved.
    with Ledger(tmp_path / "out" / "ledger.sqlite3") as ledger:
        rows = ledger.rows()
    hits = [r for r in rows if r.outcome == "cache_hit"]
    assert len(hits) == 20 and all(r.cost_usd == 0 for r in hits)
    billed = sum((r.cost_usd or Decimal(0) for r in rows), Decimal(0))
    assert float(billed) == pytest.approx(20 * first["cost_per_request_usd"])  # the first run's calls only
    changed = cascade.read_text().replace('normalizer = "choice"', 'normalizer = "choice"\ntimeout = 999', 1)
    assert changed != cascade.read_text()
    cascade.write_text(changed, encoding="utf-8")
    code, third_out = _cli(args)
    assert code == 0, third_out
    third = json.loads((tmp_path / "out" / "eval_report.json").read_text())
    assert third["response_cache"]["hits"] == 0  # another configuration: none of its decisions reused


@pytest.mark.data
def test_judged_free_text_is_scored_by_the_answering_models_labels(data_dir: Path, tmp_path: Path) -> None:
    """TriviaQA: tier 0 accepts when gpt-4o-mini and llama3.1-70b give the same folded text (scored by their judge
    labels, wrong when those differ), else gpt-4o answers (scored by its own label)."""
    from llm_cascade.core.normalize import ExactText

    task = REPO / "evals" / "tasks" / "triviaqa.toml"
    code, output = _cli(["eval", str(task), "--replay", "--limit", "60", "--out", str(tmp_path)])
    assert code == 0, output
    got = _last_json(output)
    fold = ExactText()
    correct = escalated = 0
    for e in load_examples(dataclasses.replace(load_task(task), limit=60)):
        assert e.record is not None and e.gold is None  # judged: no string gold
        cheap = [e.record.models[m] for m in ("gpt-4o-mini", "llama3.1-70b")]
        answers = {fold(run.text or "") for run in cheap}
        if len(answers) == 1 and None not in answers:
            correct += all(bool(run.correct) for run in cheap)
        else:
            escalated += 1
            top = e.record.models["gpt-4o"]
            assert fold(top.text or "") is not None
            correct += bool(top.correct)
    assert got["escalation_rate"] == escalated / 60
    assert got["accuracy"] == correct / 60


def test_live_run_of_plain_rows_with_a_system_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task with no recorded answers (like the tweets): live only, answers read and scored with the task's labels."""
    from llm_cascade.testing import RecordedServer

    monkeypatch.setenv("LLM_CASCADE_DATA", str(tmp_path))
    rows = [
        {"id": "t1", "text": "love it", "label": "positive"},
        {"id": "t2", "text": "meh", "label": "neutral"},
        {"id": "t3", "text": "awful", "label": "negative"},
    ]
    (tmp_path / "tweets.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    (tmp_path / "t.toml").write_text(
        '[data]\nformat = "rows"\npath = "tweets.jsonl"\n'
        '[prompt]\ntemplate = "{text}"\nsystem = "Label the sentiment."\nmax_tokens = 3\n'
        '[answer]\ngold_field = "label"\nlabels = ["negative", "neutral", "positive"]\n',
        encoding="utf-8",
    )
    script = {"labeler": {"love it": "Positive.", "meh": "positive", "awful": "NEGATIVE"}}
    with RecordedServer(script=script) as server:
        (tmp_path / "c.toml").write_text(
            f'[providers.recorded]\ntype = "openai"\nbase_url = "{server.base_url}"\n'
            '[cascades.t]\n[[cascades.t.tiers]]\nmembers = ["recorded:labeler"]\n',
            encoding="utf-8",
        )
        args = ["eval", str(tmp_path / "t.toml"), "--cascade", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o")]
        code, output = _cli(args)
        assert code == 0, output
        assert server.counts["labeler"] == 3
        code, output = _cli([*args[:4], "--replay", "--out", str(tmp_path / "o")])
        assert code == 2 and "no recorded answers" in output
    report = json.loads((tmp_path / "o" / "eval_report.json").read_text())
    assert report["accuracy"] == pytest.approx(2 / 3) and report["escalation_rate"] == 0
    assert report["singles"] == [] and report["cost_per_request_usd"] is None  # "labeler" has no price: unknown
    assert not (tmp_path / "o" / "eval_frontier.png").exists()
