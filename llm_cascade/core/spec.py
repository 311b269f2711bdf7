"""One description of a cascade by model names, shared by the config file, calibration and the simulator.

:class:`CascadeSpec` is what ``llm-cascade calibrate`` chooses, what :class:`llm_cascade.evals.simulate.Simulator`
replays, and what a ``[cascades.<name>]`` section of a config file describes: :meth:`CascadeSpec.to_toml` writes such
a section (read unchanged by :func:`llm_cascade.serve.config.load_config` and ``llm-cascade serve --config``) and
:meth:`CascadeSpec.from_config` reads one back. Each tier's rule carries its own config form (:meth:`Rule.spec`),
parsed by the one :func:`llm_cascade.core.forms.parse_rule`.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .agreement import Rule, Unanimous
from .errors import ConfigError

if TYPE_CHECKING:
    from ..backends.base import Backend
    from .normalize import Normalizer
    from .router import Pricer, Router

__all__ = ["CascadeSpec", "TierSpec"]


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A tier by model names (as recorded) and its agreement rule."""

    models: tuple[str, ...]
    rule: Rule = field(default_factory=Unanimous)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("TierSpec.models", "a tier needs at least one model")
        if len(set(self.models)) != len(self.models):
            raise ConfigError("TierSpec.models", f"duplicate models {list(self.models)}")


@dataclass(frozen=True, slots=True)
class CascadeSpec:
    """A cascade by model names: what calibration searches, the simulator replays, and a config file serves.

    One description of a cascade: :meth:`to_toml` writes it as a ``[cascades.<name>]`` section that
    :func:`llm_cascade.serve.config.load_config` and ``llm-cascade serve --config`` read unchanged, and
    :meth:`from_config`
    reads such a section back. Each tier's rule carries its own config form (:meth:`Rule.spec`).
    """

    tiers: tuple[TierSpec, ...]

    def __post_init__(self) -> None:
        if not self.tiers:
            raise ConfigError("CascadeSpec.tiers", "a cascade needs at least one tier")
        for k, t in enumerate(self.tiers[:-1]):
            try:
                t.rule.check(len(t.models))
            except ConfigError as exc:
                raise ConfigError(f"CascadeSpec.tiers[{k}].rule", exc.problem) from None

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(m for t in self.tiers for m in t.models)

    def describe(self) -> str:
        parts = []
        for k, t in enumerate(self.tiers):
            rule = "" if k == len(self.tiers) - 1 else f" {t.rule.describe()}"
            parts.append(f"[{' + '.join(t.models)}{rule}]")
        return " -> ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"tiers": [{"models": list(t.models), "rule": t.rule.spec()} for t in self.tiers]}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CascadeSpec:
        from .forms import parse_rule

        return cls(
            tuple(
                TierSpec(tuple(t["models"]), parse_rule(t["rule"], f"tiers[{k}].rule"))
                for k, t in enumerate(obj["tiers"])
            )
        )

    def to_toml(
        self, name: str, *, provider: str = "recorded", normalizer: str | dict[str, Any] = "exact", header: str = ""
    ) -> str:
        """This cascade as a config file section (members ``"<provider>:<model>"``); the last tier answers always."""
        from ..serve.config import parse_config

        lines = [f"# {line}".rstrip() for line in header.splitlines()]
        if provider == "recorded":  # the local recorded-answer server (llm_cascade.testing.server), as in examples/
            lines += [
                "[providers.recorded]",
                'type = "openai"',
                'base_url = "${RECORDED_BASE_URL:-http://127.0.0.1:8001/v1}"',
                'api_key_env = "RECORDED_API_KEY"',
                "",
            ]
        lines += [f"[cascades.{_toml_key(name)}]", f"normalizer = {_toml(normalizer)}", ""]
        for k, t in enumerate(self.tiers):
            lines.append(f"[[cascades.{_toml_key(name)}.tiers]]")
            lines.append(f"name = {_toml(f'tier{k}')}")
            lines.append(f"members = {_toml([f'{provider}:{m}' if provider else m for m in t.models])}")
            lines.append(f"rule = {_toml(t.rule.spec())}")
            lines.append("")
        text = "\n".join(lines)
        parse_config(tomllib.loads(text), env={})  # what we write must load: fail here, not in the user's server
        return text

    @classmethod
    def from_config(cls, cascade: Any) -> CascadeSpec:
        """Back from a loaded :class:`llm_cascade.serve.config.CascadeConfig` (members' provider prefixes dropped)."""
        from .forms import parse_rule

        tiers = []
        for k, tc in enumerate(cascade.tiers):
            models = tuple(m.model.split(":", 1)[1] if ":" in m.model else m.model for m in tc.members)
            tiers.append(TierSpec(models, parse_rule(tc.rule, f"tiers[{k}].rule")))
        return cls(tuple(tiers))

    def router(
        self,
        backend: Callable[[str], Backend],
        *,
        normalizer: Normalizer | str | None = "exact",
        prices: Pricer | None = None,
    ) -> Router:
        """The live Router this configuration stands for; ``backend`` maps a recorded model name to a Backend."""
        from .router import Router, Tier

        tiers = [Tier([backend(m) for m in t.models], t.rule, name=f"tier{k}") for k, t in enumerate(self.tiers)]
        return Router(tiers, normalizer=normalizer, prices=prices)


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _toml(value: Any) -> str:
    """A TOML value: strings, numbers (repr keeps every bit), lists and inline tables."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise ConfigError("rule", f"cannot write {value!r} as TOML")
