"""The docs site: every code block runs (python executed, TOML loaded as a configuration, shell commands checked
against what they name), and `mkdocs build --strict` passes, API reference included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _blocks import REPO, blocks, commands, problems

DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def test_one_page_per_concept() -> None:
    names = {p.stem for p in PAGES}
    assert {"index", "tiers", "normalizers", "prices-and-spend", "budgets", "evals", "proxy", "deploying"} <= names
    assert "reference" in names


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_python_blocks_run(page: Path, tmp_path: Path) -> None:
    """Each page's python blocks run in order in one fresh interpreter, offline, as a reader would paste them."""
    code = "\n\n".join(blocks(page, "python"))
    if not code:
        pytest.skip(f"{page.name} has no python block")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["LLM_CASCADE_LEDGER"] = str(tmp_path / "ledger.sqlite3")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_toml_blocks_are_valid_configuration(page: Path, tmp_path: Path) -> None:
    from llm_cascade.serve.config import load_config

    for i, text in enumerate(blocks(page, "toml")):
        path = tmp_path / f"{page.stem}-{i}.toml"
        path.write_text(text, encoding="utf-8")
        load_config(path, env={})


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_shell_commands_name_what_exists(page: Path) -> None:
    found = [(cmd, p) for block in blocks(page, "bash") for cmd in commands(block) for p in problems(cmd)]
    assert not found


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install 'llm-cascade[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text(encoding="utf-8")
    assert "route_sync" in reference and "versus" in reference  # the API reference came from the docstrings
