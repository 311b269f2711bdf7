"""Yesterday's flat import paths (``llm_cascade.router``, ``llm_cascade.ledger`` ...) resolve to today's folders.

The package was grouped into ``core/``, ``resilience/``, ``spend/`` and ``serve/``; code written against the flat
layout keeps working because an import of an old name returns the *same* module object as the new one (not a copy), so
classes, module state and monkeypatching stay shared. Only names are redirected: nothing is imported until asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

#: old module name (under ``llm_cascade.``) -> its home now.
MOVED: dict[str, str] = {
    "types": "core.types",
    "errors": "core.errors",
    "router": "core.router",
    "agreement": "core.agreement",
    "normalize": "core.normalize",
    "normalize_math": "core.normalize_math",
    "_answer": "core._answer",
    "_math_worker": "core._math_worker",
    "deferral": "core.deferral",
    "spec": "core.spec",
    "observe": "core.observe",
    "batching": "backends.batching",
    "retry": "resilience.retry",
    "limits": "resilience.limits",
    "ttft": "resilience.ttft",
    "config_resilience": "resilience.config",
    "pricing": "spend.pricing",
    "tokens": "spend.tokens",
    "ledger": "spend.ledger",
    "journal": "spend.journal",
    "budget": "spend.budget",
    "reservations": "spend.reservations",
    "sqlpool": "spend.sqlpool",
    "config": "serve.config",
    "server": "serve.server",
    "server_cli": "serve.command",
    "server_banner": "serve.banner",
    "server_schema": "serve.schema",
    "check": "serve.check",
    "cli": "serve.cli",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        prefix, _, leaf = fullname.partition(".")
        if prefix != "llm_cascade" or leaf not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module("llm_cascade." + MOVED[spec.name.partition(".")[2]])

    def exec_module(self, module: ModuleType) -> None:
        """The module was executed under its new name already."""


def install() -> None:
    """Register the alias finder once (idempotent, so a reload of the package does not stack finders)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
