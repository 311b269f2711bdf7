"""Find data files that other installed packages ship, without importing those packages.

litellm carries tiktoken's encodings and a price map; importing litellm to reach them would cost about 2 s and
may touch the network, so we ask the import system where the package lives instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_path(package: str, *parts: str) -> Path | None:
    """``<installed package>/<parts...>`` when it exists, else None (package absent, or the path is not there)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*parts)
        if path.exists():
            return path
    return None
