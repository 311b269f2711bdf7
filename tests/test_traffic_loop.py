"""The traffic loop from a fresh clone (examples/traffic_loop.py, also run by `make demo`): reference alone with
shadow on -> first part served -> calibrate --from-ledger (suggested labels, gold, --emit) -> the proxy reloads on
SIGHUP -> the rest served by the new cascade -> audit."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("traffic_loop", REPO / "examples" / "traffic_loop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_whole_loop(tmp_path: Path) -> None:
    result = _example().run(tmp_path, first=400)
    assert result["calibration"]["verdict"] == "cascade"
    assert "gold on 60 of 400" in result["calibration"]["accuracy_means"]
    assert result["before_reload"] == "recorded:big"  # the proxy started on the reference alone
    rest = result["rest"]
    assert rest["n"] == 200
    # the cheap model answers when sure, and is then always the reference's answer: as accurate, far cheaper
    assert rest["accuracy"] >= rest["reference_accuracy"] - 0.01
    assert rest["cost_per_request_usd"] * 2 <= rest["reference_cost_per_request_usd"]
    audit = result["audit"]
    assert result["audit_reference"] == "recorded:big"  # as the ledger records it: audit was given no --reference
    assert audit["requests"] >= 600 and audit["fidelity"] >= 0.99 and audit["shadow_usd"] > 0
    assert result["audit_exit"] == 0
    emitted = (tmp_path / "calibrated.toml").read_text()
    assert "[prices.overrides" in emitted and "[shadow]" in emitted
