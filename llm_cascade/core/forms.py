"""Config forms of rules and normalizers, read back: the inverse of :meth:`Rule.spec` and a normalizer's name.

``rule = "unanimous"``, ``rule = { quorum = 2 }``, ``rule = { all = [...] }``, ``normalizer = { choice = "J" }`` ...
are written by :meth:`~llm_cascade.core.agreement.Rule.spec` and by ``llm-cascade calibrate --emit``, and read here.
The parser lives beside the rules (not in the server's config module) so that the eval harness and the simulator can
read a cascade without the ``server`` extra (pydantic).
"""

from __future__ import annotations

from typing import Any

from .agreement import All, AnyOf, Rule, always, confidence, majority, quorum, semantic, unanimous, vote_share
from .errors import ConfigError
from .normalize import NAMED, ChoiceLetter, JsonField, LabelSet, Normalizer, Regex, as_normalizer

__all__ = ["NormalizerSpec", "RuleSpec", "parse_normalizer", "parse_rule"]

RuleSpec = str | dict[str, Any]
NormalizerSpec = str | dict[str, Any]


_NAMED_RULES = {"unanimous": unanimous, "always": always, "majority": majority}


def parse_rule(spec: RuleSpec, field: str = "rule") -> Rule:
    """Build an agreement rule from its config form: "unanimous", {quorum: 2}, {all: [...]} ..."""
    if isinstance(spec, str):
        factory = _NAMED_RULES.get(spec)
        if factory is None:
            raise ConfigError(field, f"unknown rule {spec!r}; known: {', '.join(sorted(_NAMED_RULES))} or a table")
        return factory()
    if not isinstance(spec, dict):
        raise ConfigError(field, f"must be a rule name or a table, got {type(spec).__name__}")
    for combinator in ("all", "any"):
        if combinator in spec:
            if len(spec) != 1 or not isinstance(spec[combinator], list) or not spec[combinator]:
                raise ConfigError(field, f"{{{combinator} = [...]}} takes a non-empty list of rules and nothing else")
            rules = tuple(parse_rule(s, f"{field}.{combinator}[{i}]") for i, s in enumerate(spec[combinator]))
            if len(rules) == 1:
                return rules[0]
            return All(rules) if combinator == "all" else AnyOf(rules)
    if "learned" in spec:
        from .deferral import parse as parse_learned

        if len(spec) != 1:
            raise ConfigError(field, f"{{learned = {{...}}}} takes nothing else, got keys {sorted(spec)}")
        return parse_learned(spec["learned"], f"{field}.learned")
    kind = spec.get("kind", "prob")
    extra = set(spec) - {"quorum", "vote_share", "confidence", "semantic", "kind"}
    names = [k for k in ("quorum", "vote_share", "confidence", "semantic") if k in spec]
    if extra or len(names) != 1 or ("kind" in spec and names != ["confidence"]):
        raise ConfigError(
            field, f"expected one of quorum / vote_share / confidence (+ kind) / semantic, got keys {sorted(spec)}"
        )
    value = spec[names[0]]
    try:
        if names[0] == "quorum":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{field}.quorum", f"must be an integer, got {value!r}")
            return quorum(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{field}.{names[0]}", f"must be a number, got {value!r}")
        if names[0] == "vote_share":
            return vote_share(float(value))
        if names[0] == "semantic":
            return semantic(float(value))
        return confidence(float(value), kind)
    except ConfigError as exc:
        if exc.field.startswith(field):
            raise
        raise ConfigError(f"{field}.{names[0]}", exc.problem) from None


def parse_normalizer(spec: NormalizerSpec, field: str = "normalizer") -> Normalizer:
    """Build a normalizer from its config form: a name, {labels, synonyms}, {choice}, {regex, upper}, {json, then}."""
    if isinstance(spec, str):
        return as_normalizer(spec, field)
    if not isinstance(spec, dict):
        raise ConfigError(field, f"must be a normalizer name or a table, got {type(spec).__name__}")
    keys = set(spec)
    if "labels" in spec and keys <= {"labels", "synonyms"}:
        labels, synonyms = spec["labels"], spec.get("synonyms", {})
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"{field}.labels", "must be a list of strings")
        if not isinstance(synonyms, dict):
            raise ConfigError(f"{field}.synonyms", "must be a table of synonym -> label")
        return LabelSet(labels, synonyms)
    if "choice" in spec and keys == {"choice"}:
        return ChoiceLetter(str(spec["choice"]))
    if "regex" in spec and keys <= {"regex", "upper"}:
        return Regex(str(spec["regex"]), bool(spec.get("upper", False)))
    if "json" in spec and keys <= {"json", "then"}:
        then = parse_normalizer(spec["then"], f"{field}.then") if "then" in spec else None
        return JsonField(str(spec["json"]), then)
    raise ConfigError(
        field, f"expected a name ({', '.join(sorted(NAMED))}) or one of {{labels}}, {{choice}}, {{regex}}, {{json}}"
    )
