"""Loading a repository script (an example, a benchmark, pricing/build.py) as a module, for tests that call its
functions: the scripts are not in a package, so they are imported by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def load_script(name: str, relative: str) -> ModuleType:
    """``REPO / relative`` imported as module ``name`` (registered in ``sys.modules`` first: dataclasses look their
    module up while a class is built)."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
