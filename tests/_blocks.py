"""Code blocks of the README and the docs site, and a check that every shell command in them names something real.

Python blocks are run by the tests that import this. Shell blocks cannot all be run (``pip install``, ``make demo``),
so each command is checked against what it names: an extra in pyproject.toml, a make target, a file, a module, an
``llm-cascade`` subcommand and each of its options.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def commands(block: str) -> list[list[str]]:
    """Each command of a shell block: continuations joined, comments dropped, split at ``&&``, ``|``, ``;``, ``&``."""
    text = block.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        cmd: list[str] = []
        for w in [*words, "&&"]:
            if w in ("&&", "|", ";", "&", "||"):
                if cmd:
                    out.append(cmd)
                cmd = []
            elif w.endswith("&") and not w.startswith("-"):
                cmd.append(w[:-1])
                out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


def _extras() -> set[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return set(data["project"]["optional-dependencies"])


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(encoding="utf-8"), flags=re.M))


def _cli_options(sub: str) -> set[str] | None:
    import typer

    from llm_cascade.serve.cli import _app

    group = typer.main.get_command(_app())
    command = group.commands.get(sub)  # type: ignore[attr-defined]
    if command is None:
        return None
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def problems(cmd: list[str]) -> list[str]:
    """What in ``cmd`` does not exist (empty when everything it names does)."""
    head, args = cmd[0], cmd[1:]
    found: list[str] = []
    if head == "pip":
        for a in args:
            m = re.fullmatch(r"llm-cascade\[([\w,-]+)\]", a)
            if m:
                found += [f"no extra {x!r}" for x in m.group(1).split(",") if x not in _extras()]
    elif head == "make":
        found += [f"no make target {t!r}" for t in args if not t.startswith("-") and t not in _make_targets()]
    elif head in ("python", "pytest"):
        if args[:1] == ["-m"]:
            if importlib.util.find_spec(args[1]) is None:
                found.append(f"no module {args[1]!r}")
        else:
            target = next((a for a in args if not a.startswith("-")), None)
            if target is not None and not (REPO / target.split("::")[0]).exists():
                found.append(f"no file {target!r}")
    elif head == "llm-cascade":
        options = _cli_options(args[0])
        if options is None:
            return [f"no subcommand {args[0]!r}"]
        found += [
            f"{args[0]} has no option {a!r}" for a in args[1:] if a.startswith("--") and a.split("=")[0] not in options
        ]
        found += [f"no file {a!r}" for a in args[1:] if re.match(r"(examples|evals)/", a) and not (REPO / a).exists()]
    return found
