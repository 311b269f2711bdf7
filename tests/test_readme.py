"""The README's quickstart runs as written, with no API key, and prints what the README says it prints."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _blocks import blocks, commands, problems

from llm_cascade.testing import RecordedServer

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def test_quickstart_runs_and_prints_what_it_promises() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    quickstart = blocks[0]
    promised = re.search(r"print\(.*\)\s*#\s*(\S+ \S+ \S+)\s", quickstart)
    assert promised is not None
    out = subprocess.run([sys.executable, "-c", quickstart], capture_output=True, text=True, check=True).stdout
    assert out.strip() == promised.group(1)


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _env(server: RecordedServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The real SDKs, pointed at the local recorded-answer server by the variables they read themselves."""
    env = {
        **os.environ,
        "LLM_CASCADE_LEDGER": str(tmp_path / "ledger.sqlite3"),
        "OPENAI_BASE_URL": server.base_url,
        "ANTHROPIC_BASE_URL": server.url,
        "VLLM_URL": server.base_url,
        "OPENAI_API_KEY": "sk-readme-test",
        "ANTHROPIC_API_KEY": "sk-ant-readme-test",
        **extra,
    }
    return env


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def providers() -> Iterator[RecordedServer]:
    script: dict[str, Any] = {
        "gpt-4o-mini": "B",
        "claude-3-haiku-20240307": "Answer: B",
        "llama3.1-8b": "(C)",
        "gpt-4o": "B",
        "claude-sonnet-4-5": "B",
    }
    with RecordedServer(script=script) as server:
        yield server


def test_provider_snippet_routes_for_real_against_the_local_server(providers: RecordedServer, tmp_path: Path) -> None:
    """The real-provider snippet as written: real openai and anthropic SDKs over HTTP, priced members, a budget."""
    providers.reset()
    out = _run(_blocks()[1], _env(providers, tmp_path))
    assert out.returncode == 0, out.stderr
    # quorum(2) of gpt-4o-mini "B", claude "Answer: B", local "(C)": B at tier 0, answered by the first member,
    # and priced (every member has a price, the local one from its declared entry)
    assert out.stdout.split() == ["B", "0", "openai:gpt-4o-mini", "True"]
    assert providers.counts["gpt-4o-mini"] == 1 and providers.counts["llama3.1-8b"] == 1
    assert providers.counts["gpt-4o"] == 0


def test_provider_snippet_without_keys_fails_up_front_naming_them(providers: RecordedServer, tmp_path: Path) -> None:
    env = _env(providers, tmp_path)
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(key)
    out = _run(_blocks()[1], env)
    assert out.returncode != 0
    assert "$OPENAI_API_KEY" in out.stderr and "$ANTHROPIC_API_KEY" in out.stderr  # router.check() names both
    assert "unknown price" not in out.stderr


def test_fallback_chain_snippet_falls_back(tmp_path: Path) -> None:
    """The first model of the chain fails (this server has no gpt-4o-mini: 404, not retried); the second answers."""
    with RecordedServer(script={"claude-3-haiku-20240307": "Bonjour"}) as server:
        out = _run(_blocks()[2], _env(server, tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Bonjour", "anthropic:claude-3-haiku-20240307"]


def test_python_snippets_compile() -> None:
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S):
        compile(block, "README.md", "exec", flags=0x2000)  # PyCF_ALLOW_TOP_LEVEL_AWAIT


def test_readme_fits_two_screens_of_install_quickstart_proxy_and_eval() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 250
    heads = [i for i, line in enumerate(lines) if line.startswith("## ")]
    titles = [lines[i] for i in heads]
    assert titles[:4] == [
        "## Install",
        "## Quickstart (no API key needed)",
        "## The proxy in three lines",
        "## The eval harness in three lines",
    ]
    assert heads[3] < 100  # the eval harness starts within two screens
    assert "pip install 'llm-cascade[openai]'" in text
    assert max(len(line) for line in lines if not line.startswith("|")) <= 120


def test_every_python_block_of_the_readme_has_its_test() -> None:
    """Blocks 0-2 are run above; a fourth one needs a test of its own before it ships."""
    assert len(_blocks()) == 3


def test_every_shell_command_of_the_readme_names_something_that_exists() -> None:
    found = [(cmd, p) for block in blocks(README, "bash") for cmd in commands(block) for p in problems(cmd)]
    assert not found


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _readme_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The recorded-answer server started by the README's own shell lines (on a free port), and the environment its
    ``export`` line gives."""
    shell = next(b for b in blocks(README, "bash") if "llm_cascade.testing.server" in b)
    start, *rest = commands(shell)
    port = _free_port()
    argv = [sys.executable if w == "python" else w for w in start]
    argv[argv.index("--port") + 1] = str(port)
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    for cmd in rest:
        assert cmd[0] == "export"
        env |= dict(w.replace(":8000", f":{port}").split("=", 1) for w in cmd[1:])
    env["LLM_CASCADE_LEDGER"] = str(tmp_path / "ledger.sqlite3")
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None and "serving" in server.stdout.readline()
        env["_PORT"] = str(port)
        yield env
    finally:
        server.terminate()
        server.wait(10)


def test_the_server_command_and_exports_run_the_provider_snippet(tmp_path: Path) -> None:
    """The README's own shell lines start the recorded-answer server, export the variables, and the snippet runs."""
    with _readme_server(tmp_path) as env:
        out = _run(_blocks()[1], env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["B", "0", "openai:gpt-4o-mini", "True"]


@pytest.mark.slow
def test_the_proxy_lines_run_as_written(tmp_path: Path) -> None:
    """check, serve and curl from the README's proxy block, against the server its quickstart starts."""
    import json
    import time
    import urllib.request

    proxy = next(b for b in blocks(README, "bash") if "llm-cascade serve" in b)
    cmds = commands(proxy)
    with _readme_server(tmp_path) as env:
        port = _free_port()
        served: subprocess.Popen[str] | None = None
        try:
            for cmd in cmds:
                if cmd[0] == "export":
                    env |= dict(w.replace(":8000", f":{env['_PORT']}").split("=", 1) for w in cmd[1:])
                elif cmd[:2] == ["llm-cascade", "check"]:
                    done = subprocess.run(
                        [sys.executable, "-m", "llm_cascade.serve.cli", *cmd[1:]],
                        capture_output=True,
                        text=True,
                        env=env,
                        cwd=REPO,
                    )
                    assert done.returncode == 0, done.stdout + done.stderr
                elif cmd[:2] == ["llm-cascade", "serve"]:
                    argv = [sys.executable, "-m", "llm_cascade.serve.cli", *cmd[1:]]
                    argv[argv.index("--port") + 1] = str(port)
                    served = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
                    for _ in range(300):
                        try:
                            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                            break
                        except OSError:
                            time.sleep(0.1)
                else:
                    assert cmd[0] == "curl"
                    url = next(w for w in cmd if "/v1/" in w).replace("localhost:8080", f"127.0.0.1:{port}")
                    body = cmd[cmd.index("-d") + 1].encode()
                    with urllib.request.urlopen(urllib.request.Request("http://" + url, data=body), timeout=30) as r:
                        reply = json.loads(r.read())
        finally:
            if served is not None:
                served.terminate()
                served.wait(10)
    assert reply["choices"][0]["message"]["content"] == "B"
    assert reply["llm_cascade"]["tier"] == 0 and reply["llm_cascade"]["cost_usd"] > 0


@pytest.mark.data
@pytest.mark.slow
def test_the_eval_harness_lines_run_as_written(data_dir: Path, tmp_path: Path) -> None:
    """The split the README names, then its eval, calibrate and compare lines, with build/ in a temporary folder."""
    text = README.read_text()
    split = re.search(r"\(`(llm-cascade split [^`]+)`", text)
    assert split is not None
    harness = next(b for b in blocks(README, "bash") if "llm-cascade calibrate" in b)
    build = tmp_path / "build"
    env = {**os.environ, "LLM_CASCADE_DATA": str(data_dir)}
    for cmd in [split.group(1).split(), *commands(harness)]:
        assert cmd[0] == "llm-cascade"
        args = [a.replace("../shared/data", str(data_dir)).replace("build/", f"{build}/") for a in cmd[1:]]
        if cmd[1] == "eval":  # the task's default report folder is build/eval/<task>, relative to the caller
            args += ["--out", str(build / "eval" / "mmlu")]
        done = subprocess.run(
            [sys.executable, "-m", "llm_cascade.serve.cli", *args], capture_output=True, text=True, env=env, cwd=REPO
        )
        assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
    page = (build / "compare.html").read_text()
    assert "mmlu" in page and "held out" in page and (build / "cascade.toml").exists()


def test_the_extras_table_lists_every_extra_of_pyproject() -> None:
    import tomllib

    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    table = README.read_text().split("## Install", 1)[1].split("## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w-]+)` \|", table, flags=re.M))
    assert listed == extras
