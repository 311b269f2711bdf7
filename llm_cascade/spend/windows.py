"""Context windows (max input tokens) of known models, from the model information litellm bundles.

Read only when a prompt was too long for a member (:mod:`llm_cascade.core.refusal` asks whether a later member has
a larger window before escalating), from litellm's JSON file (never imported, as the price table reads it), once per
process. A model it does not list has no known window (None): the request then escalates as it always did.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from .pricing import candidates, litellm_map_path


@functools.cache
def _windows(path: Path | None) -> dict[str, int]:
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    out: dict[str, int] = {}
    for key, spec in raw.items():
        tokens = spec.get("max_input_tokens") if isinstance(spec, dict) else None
        if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0:
            out.setdefault(key.lower(), tokens)
    return out


def context_window(model: str) -> int | None:
    """``model``'s context window in tokens ("openai:gpt-4o" -> 128000), or None when not known."""
    known = _windows(litellm_map_path())
    for name in candidates(model):
        if name in known:
            return known[name]
    return None
