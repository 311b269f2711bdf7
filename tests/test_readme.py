"""The README's quickstart runs as written, with no API key, and prints what the README says it prints."""

from __future__ import annotations

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


def test_python_snippets_compile() -> None:
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S):
        compile(block, "README.md", "exec", flags=0x2000)  # PyCF_ALLOW_TOP_LEVEL_AWAIT
