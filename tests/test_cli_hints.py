"""CLI errors a new user meets first say what to do, in one line, without a traceback (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_cascade.serve.cli import _app


@pytest.mark.parametrize(
    ("relative", "hint"),
    [
        ("zeroeval-gsm8k/gsm.jsonl.gz", "import_zeroeval_gsm"),
        ("zeroeval-gsm8k/raw/gsm/Athene-70B.json.gz", "import_zeroeval_gsm"),
        ("mot/GPT4_result/date_cot1.json.gz", "import_mot"),
    ],
)
def test_calibrate_on_a_recognised_but_unimported_file_says_to_import_it(
    data_dir: Path, relative: str, hint: str
) -> None:
    path = data_dir / relative
    if not path.is_file():
        pytest.skip(f"{path} is not in the recorded data")
    out = CliRunner().invoke(_app(), ["calibrate", str(path), "--test", str(path)])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert hint in out.output.replace("\n", "") and "import" in out.output
