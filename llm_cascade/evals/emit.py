"""What ``calibrate --emit`` writes besides the cascade: the normalizer with its full letter range and the prices.

Two defects of an emitted file are fixed here: a ``choice`` normalizer that reads only A-D (a 10-option task served
from it loses every E-J answer), and a file without prices (every served call then costs "unknown", so no budget,
report or audit can count it). The normalizer is checked before the search, so a typo costs nothing.
"""

from __future__ import annotations

import datetime
import re
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from ..core.errors import ConfigError
from ..core.normalize import Normalizer

LETTER = re.compile(r"^[A-Z]$")


def normalizer_spec(name: str, answers: Iterable[str] = ()) -> str | dict[str, Any]:
    """The config value of ``--normalizer``: ``choice``/``letter`` widened to the last letter seen among ``answers``
    (at least D), ``choice:J`` for an explicit range, any other name as is. Raises ConfigError naming --normalizer
    for a name the config would refuse."""
    from ..serve.config import parse_normalizer

    base, _, last = name.partition(":")
    spec: str | dict[str, Any]
    if base in ("choice", "letter"):
        letters = [a for a in answers if a is not None and LETTER.match(a)]
        top = last.upper() if last else max([*letters, "D"])
        spec = "choice" if top == "D" else {"choice": top}
    elif last:
        raise ConfigError("--normalizer", f"only choice takes a letter range (choice:J), got {name!r}")
    else:
        spec = name
    parse_normalizer(spec, "--normalizer")
    return spec


def build_normalizer(spec: str | dict[str, Any]) -> Normalizer:
    from ..serve.config import parse_normalizer

    return parse_normalizer(spec, "--normalizer")


def prices_toml(prices: Mapping[str, Mapping[str, Any]]) -> str:
    """A ``[prices]`` section: the shipped table, overridden by the prices calibration used for every member."""
    from ..core.spec import _toml, _toml_key

    if not prices:
        return ""
    today = datetime.date.today().isoformat()
    lines = ["[prices]", 'path = "default"', ""]
    for name, entry in prices.items():
        lines.append(f"[prices.overrides.{_toml_key(name)}]")
        for key, value in {**entry, "as_of": entry.get("as_of", today)}.items():
            lines.append(f"{key} = {_toml(value)}")
        lines.append("")
    return "\n".join(lines)


def shadow_toml(rate: float, pool: Iterable[str], limit_usd: float | None = None) -> str:
    """A ``[shadow]`` section observing ``pool`` (the reference included, so the deployed cascade can be audited)."""
    from ..core.spec import _toml

    if rate <= 0:
        return ""
    lines = ["[shadow]", f"rate = {_toml(float(rate))}", f"pool = {_toml(list(pool))}"]
    if limit_usd is not None:
        lines.append(f"limit_usd = {_toml(float(limit_usd))}")
    return "\n".join(lines) + "\n"


def checked(text: str) -> str:
    """The whole emitted file, loaded as ``serve`` will load it: fail here, not in the user's server."""
    from ..serve.config import parse_config

    parse_config(tomllib.loads(text), env={})
    return text
