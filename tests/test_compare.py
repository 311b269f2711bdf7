"""`llm-cascade compare`: eval and calibrate reports side by side, as markdown and as one self-contained HTML page
that headless Chromium renders with the same $ per request as the JSON it was built from."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from llm_cascade.evals.compare import from_ledger, load_reports, to_html, to_markdown, wilson
from llm_cascade.spend.money import LEGEND

REPO = Path(__file__).resolve().parent.parent


def _eval_report(
    task: str, cascade: tuple[float, float | None], singles: dict[str, tuple[float, float | None]]
) -> dict[str, Any]:
    """The shape `llm-cascade eval` writes (llm_cascade.evals.summary.summarize)."""
    acc, cost = cascade
    return {
        "name": f"{task}: demo (replay)",
        "task": task,
        "mode": "replay",
        "n": 200,
        "n_scored": 200,
        "accuracy": acc,
        "accuracy_ci": [acc - 0.03, acc + 0.03],
        "escalation_rate": 0.25,
        "cost_per_request_usd": cost,
        "singles": [{"model": m, "accuracy": a, "cost_per_request_usd": c} for m, (a, c) in singles.items()],
        "flags": [],
    }


SAVING = _eval_report("saves", (0.95, 0.00015), {"small": (0.90, 0.0000134), "big": (0.94, 0.000222)})
LOSING = _eval_report("loses", (0.84, 0.00053355), {"mid": (0.877, 0.000165), "big": (0.81, 0.000546)})
UNPRICED = _eval_report("unpriced", (0.83, None), {"gpt-4#0": (0.89, None)})


def _write(tmp_path: Path, *reports: dict[str, Any]) -> list[Path]:
    paths = []
    for r in reports:
        p = tmp_path / r["task"] / "eval_report.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(r), encoding="utf-8")
        paths.append(p)
    return paths


def test_verdicts_say_where_the_cascade_saves_and_where_it_does_not(tmp_path: Path) -> None:
    _write(tmp_path, SAVING, LOSING, UNPRICED)
    comps = {c.task: c for c in load_reports([tmp_path])}
    assert comps["saves"].verdict().startswith("SAVING") and "1.48× cheaper than big" in comps["saves"].verdict()
    assert comps["loses"].verdict().startswith("NO SAVING: mid alone")  # mid is more accurate and 3.23× cheaper
    assert "3.23× cheaper than the cascade" in comps["loses"].verdict()
    assert "unknown" in comps["unpriced"].verdict()
    md = to_markdown(list(comps.values()))
    assert "| mid alone | $0.000165 | $0.165 |" in md and "3.23× costlier than mid" in md
    assert md.count(LEGEND) == 3  # a legend under every table
    assert not re.search(r"\d[eE][-+]?\d", md)  # no exponent anywhere
    assert "0.3" not in comps["loses"].saving(comps["loses"].singles[0])  # never a ratio below 1


def test_single_models_get_a_wilson_interval() -> None:
    lo, hi = wilson(0.9, 100) or (0, 0)
    assert 0.82 < lo < 0.84 and 0.94 < hi < 0.95
    assert wilson(0.5, 0) is None


def test_a_calibrate_report_reads_as_held_out(tmp_path: Path) -> None:
    report = {
        "name": "mmlu A -> B",
        "verdict": "cascade",
        "n_calibration": 140,
        "n_test": 145,
        "cascade": {
            "description": "[a + b] -> [c]",
            "accuracy": 0.9,
            "accuracy_ci": [0.85, 0.95],
            "cost_per_request_usd": 0.0001,
            "reach_rate_per_tier": [1.0, 0.3],
        },
        "singles": [{"model": "c", "accuracy": 0.88, "cost_per_request_usd": 0.0003}],
        "flags": [],
    }
    path = tmp_path / "cal.json"
    path.write_text(json.dumps([report]), encoding="utf-8")
    (comp,) = load_reports([path])
    assert "145 TEST examples it never saw" in comp.compared
    assert comp.cascade.escalation_rate == 0.3
    assert comp.verdict().startswith("SAVING") and "3.00× cheaper than c" in comp.verdict()


def test_an_audit_report_reads_as_fidelity_to_the_reference(tmp_path: Path) -> None:
    """The shape `llm-cascade audit --from-ledger` writes: served traffic against its reference model."""
    audit = {
        "reference": "big",
        "fidelity_means": "the cascade's answer equals big's on the shadowed requests",
        "days": [],
        "total": {
            "requests": 602,
            "fidelity": 0.99,
            "fidelity_ci95": [0.98, 1.0],
            "cost_per_request_usd": 0.000337,
            "reference_cost_per_request_usd": 0.001005,
        },
    }
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(audit), encoding="utf-8")
    (comp,) = load_reports([path])
    assert "fidelity to big" in comp.compared and comp.singles[0].cost_per_request == 0.001005
    assert comp.verdict().startswith("TRADE-OFF") and "2.98× cheaper than big" in comp.verdict()


def test_a_plot_that_cannot_be_drawn_says_why(tmp_path: Path) -> None:
    page = to_html(load_reports(_write(tmp_path, UNPRICED)))
    assert "<svg" not in page and "no plot: the cascade cannot be placed (its price is unknown)" in page


def test_ledger_rows_give_price_and_escalation_per_cascade(tmp_path: Path) -> None:
    from decimal import Decimal

    from llm_cascade import Usage
    from llm_cascade.core.types import Call
    from llm_cascade.spend.ledger import Ledger

    db = tmp_path / "ledger.sqlite3"
    ledger = Ledger(db)
    for i in range(4):
        calls = [Call("cheap", 0, "ok", Usage(100, 10), cost_usd=Decimal("0.0001"))]
        if i == 0:
            calls.append(Call("top", 1, "ok", Usage(100, 10), cost_usd=Decimal("0.001")))
        ledger.record(f"r{i}", calls, {"cascade": "qa"})
    ledger.close()
    (comp,) = from_ledger(str(db))
    assert comp.task == "qa" and comp.n == 4 and comp.cascade.escalation_rate == 0.25
    assert comp.cascade.cost_per_request == pytest.approx(0.0014 / 4)
    assert "no accuracy" in comp.compared
    top = next(s for s in comp.singles if s.label == "top")
    # "top" sent every request: its one recorded call, and the three others priced at the rate that call was billed
    # (it is in no price table): 0.001 for the same 110 tokens each
    assert top.cost_per_request == pytest.approx(0.001)
    assert comp.saving(next(s for s in comp.singles if s.label == "cheap")) == "3.50× costlier than cheap"
    assert comp.saving(top) == "2.86× cheaper than top"


# --- the HTML page, rendered by headless Chromium (Debian's package; `make test` installs it) --------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless Chromium on this machine (`make test` installs Debian's chromium package)")


def _browse(page: Path, tmp_path: Path, *extra: str) -> str:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={tmp_path / f'profile{len(extra)}'}",
    ]
    out = subprocess.run(
        [_chromium(), *flags, *extra, page.resolve().as_uri()], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


class _Cells(HTMLParser):
    """The text of each ``tr[data-config]``'s cells, keyed by task and configuration, as the browser rendered it."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], dict[str, str]] = {}
        self._task = ""
        self._row: tuple[str, str] | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and a.get("data-task"):
            self._task = a["data-task"] or ""
        elif tag == "tr" and a.get("data-config"):
            self._row = (self._task, a["data-config"] or "")
            self.cells[self._row] = {}
        elif tag == "td" and self._row is not None:
            self._cell = a.get("class") or ""
            self.cells[self._row][self._cell] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._cell is not None:
            self.cells[self._row][self._cell] += data


def _dollars(text: str) -> float | None:
    return None if text == "unknown" else float(text.replace("$", "").replace(",", ""))


def _check_page(page: Path, reports: list[dict[str, Any]], tmp_path: Path) -> None:
    dom = _browse(page, tmp_path, "--dump-dom")
    parser = _Cells()
    parser.feed(dom)
    for r in reports:
        task = r.get("task") or r["name"]
        expected = {"cascade": r["cost_per_request_usd"]}
        expected |= {s["model"]: s["cost_per_request_usd"] for s in r["singles"]}
        for config, want in expected.items():
            shown = _dollars(parser.cells[(task, config)]["usd-per-request"])
            if want is None:
                assert shown is None, (task, config)
            else:  # three significant digits
                assert shown == pytest.approx(want, rel=5e-3), (task, config, shown, want)
    shot = tmp_path / "page.png"
    _browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars")
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1200, 1600)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50  # text, tables and a plot, not a blank page
    assert shot.stat().st_size > 30_000


def test_the_html_page_renders_in_chromium_with_the_json_figures(tmp_path: Path) -> None:
    reports = [SAVING, LOSING, UNPRICED]
    page = tmp_path / "out.html"
    page.write_text(to_html(load_reports(_write(tmp_path, *reports))), encoding="utf-8")
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched at view time
    assert "<script" not in text
    _check_page(page, reports, tmp_path)


@pytest.mark.data
@pytest.mark.slow
def test_compare_of_real_eval_runs_from_the_command_line(data_dir: Path, tmp_path: Path) -> None:
    """`llm-cascade eval ... --replay` for two tasks, then `llm-cascade compare <out>/*/report.json --html`."""
    exe = [sys.executable, "-m", "llm_cascade.serve.cli"]
    env = {**os.environ, "LLM_CASCADE_DATA": str(data_dir), "PYTHONPATH": str(REPO)}
    for task in ("mmlu", "triviaqa"):
        out = tmp_path / "eval" / task
        subprocess.run(
            [*exe, "eval", str(REPO / "evals" / "tasks" / f"{task}.toml"), "--replay", "--out", str(out)],
            check=True,
            capture_output=True,
            env=env,
            cwd=tmp_path,
        )
    files = sorted((tmp_path / "eval").glob("*/report.json"))
    page = tmp_path / "out.html"
    done = subprocess.run(
        [*exe, "compare", *map(str, files), "--html", str(page)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "SAVING" in done.stdout and "NO SAVING" in done.stdout  # triviaqa saves, mmlu's example cascade does not
    _check_page(page, [json.loads(f.read_text()) for f in files], tmp_path)
