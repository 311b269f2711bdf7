"""The README's quickstart runs as written, with no API key, and prints what the README says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quickstart_runs_and_prints_what_it_promises() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    quickstart = blocks[0]
    promised = re.search(r"print\(.*\)\s*#\s*(\S+ \S+ \S+)\s", quickstart)
    assert promised is not None
    out = subprocess.run([sys.executable, "-c", quickstart], capture_output=True, text=True, check=True).stdout
    assert out.strip() == promised.group(1)


def test_provider_snippet_builds_its_router_without_keys(tmp_path: Path) -> None:
    """The second snippet, up to its first network call: every name exists and the configuration is valid."""
    block = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[1]
    setup = block.split("result = await")[0] + "\nprint(len(router.tiers), type(router.budget).__name__)\n"
    env = {**os.environ, "LLM_CASCADE_LEDGER": str(tmp_path / "ledger.sqlite3")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    out = subprocess.run([sys.executable, "-c", setup], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["3", "Budget"]


def test_python_snippets_compile() -> None:
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S):
        compile(block, "README.md", "exec", flags=0x2000)  # PyCF_ALLOW_TOP_LEVEL_AWAIT
