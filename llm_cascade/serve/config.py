"""One configuration file for cascades, providers, prices, the ledger, budgets and the proxy server.

The same file serves Python and the proxy: ``build_router(load_config("cascade.toml"), "mmlu")`` is the Router that
``llm-cascade serve --config cascade.toml`` puts behind the ``mmlu`` model. TOML is always read (``tomllib``); YAML
when PyYAML is installed. Every string value may use ``${VAR}`` or ``${VAR:-default}``, read from the environment
(or from the ``env`` mapping given to :func:`load_config`), so a base URL on a free port or a per-machine database
URL need not be written into the file.

Secrets never live in the file: a provider names the environment variable holding its key (``api_key_env``), a
server key is an environment variable name or a SHA-256 digest of the key.

    [providers.recorded]                      # members "recorded:<model>" use this provider
    type = "openai"                           # the backend adapter (default: the section name)
    base_url = "${RECORDED_BASE_URL}/v1"
    api_key_env = "RECORDED_API_KEY"

    [cascades.mmlu]
    normalizer = "choice"                     # or {labels = [...]}, {choice = "E"}, {regex = "..."}, {json = "key"}
    [[cascades.mmlu.tiers]]
    members = ["recorded:gpt-4o-mini", "recorded:llama3.1-8b"]
    rule = "unanimous"  # or "majority", {quorum = 2}, {vote_share = 0.6}, {confidence = 0.9}, {semantic = 0.5},
                        # {all = [...]}, {learned = {weights = [...], bias = ..., threshold = ...}} (calibrate --emit)
    timeout = 10
    [[cascades.mmlu.tiers]]
    members = ["recorded:gpt-4o"]

Any invalid value raises :class:`~llm_cascade.core.errors.ConfigError` naming its path
(``cascades.mmlu.tiers[0].rule``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from ..core.errors import ConfigError, MissingDependencyError

try:
    from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
except ImportError:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("pydantic", "server") from None

from ..backends.base import Backend, resolve, split_name
from ..core.forms import parse_normalizer, parse_rule
from ..core.params import reserved_tag
from ..resilience.config import (
    BreakerConfig,
    FieldProblem,
    ProviderResilience,
    RateLimitConfig,
    ResilienceConfig,
    RetryConfig,
    RetryField,
    check_limit_keys,
)
from ..resilience.limits import Resilience

if TYPE_CHECKING:
    from ..core.router import Guard, Pricer, Router, SpendSink
    from ..core.spec import CascadeSpec
    from ..resilience.retry import Clock, Sleep

__all__ = [
    "AuditConfig",
    "BreakerConfig",
    "CascadeConfig",
    "Components",
    "Config",
    "KeyConfig",
    "MemberConfig",
    "ProviderConfig",
    "RateLimitConfig",
    "ResilienceConfig",
    "RetryConfig",
    "ServerConfig",
    "ShadowConfig",
    "TierConfig",
    "build_components",
    "build_router",
    "build_routers",
    "load_config",
    "parse_config",
    "parse_normalizer",
    "parse_rule",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check(parse: Any, value: Any, base: str) -> Any:
    """Run a parser inside a pydantic validator: its ConfigError becomes a ValueError pydantic places at the field."""
    try:
        parse(value, base)
    except ConfigError as exc:
        sub = exc.field.removeprefix(base).lstrip(".")
        raise ValueError(f"{sub}: {exc.problem}" if sub else exc.problem) from None
    return value


# -- the schema ------------------------------------------------------------------------------------------------------


def _env_var_name(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
        raise ValueError("must be the NAME of an environment variable (the key itself never goes in the file)")
    return v


class ProviderConfig(ProviderResilience):
    """A named provider: which backend adapter, where it lives, the NAME of the variable holding its key, and its
    quota (``limit``, shared by every tier that uses the provider), retry fields and breaker (see
    :mod:`.config_resilience`)."""

    type: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        return _env_var_name(v)


class MemberConfig(_Model):
    """One tier member given as a table; a plain "provider:model" string is the short form."""

    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # The member's own price, used before the table: ``price = {input = 0.1, output = 0.4}`` (USD per 1M tokens;
    # source and as_of optional here) or ``price_per_hour = 2.5`` for a local server billed by compute time.
    price: dict[str, Any] | None = None
    price_per_hour: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)] | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _check(lambda x, _: split_name(x), v, "backend")  # type: ignore[no-any-return]

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        return _env_var_name(v)


class TierConfig(_Model):
    """One tier: its members, the rule that accepts their answer, and how it treats time and failures."""

    members: Annotated[list[MemberConfig], Field(min_length=1)]
    name: str | None = None
    rule: Any = "unanimous"
    normalizer: Any = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    # seconds, "default" (10 s for streamed members) or "off"; see llm_cascade.resilience.ttft
    first_token_timeout: Annotated[float, Field(gt=0)] | Literal["default", "off"] = "default"
    on_error: Literal["ignore", "escalate"] = "ignore"
    on_refusal: Literal["raise", "escalate"] = "raise"  # see llm_cascade.core.refusal
    retry: RetryField = None

    @field_validator("members", mode="before")
    @classmethod
    def _members(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"model": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("rule")
    @classmethod
    def _rule(cls, v: Any) -> Any:
        return _check(parse_rule, v, "rule")

    @field_validator("normalizer")
    @classmethod
    def _normalizer(cls, v: Any) -> Any:
        return v if v is None else _check(parse_normalizer, v, "normalizer")

    @model_validator(mode="after")
    def _rule_fits_tier(self) -> TierConfig:
        # a rule that can never accept on this many members (quorum = 3 on two) is a mistake, not a policy
        try:
            parse_rule(self.rule, "rule").check(len(self.members))
        except ConfigError as exc:
            raise ValueError(f"rule: {exc.problem}") from None
        return self


class CascadeConfig(_Model):
    """A cascade: tiers cheapest first, the default normalizer, the whole request's deadline."""

    tiers: Annotated[list[TierConfig], Field(min_length=1)]
    normalizer: Any = "exact"
    timeout: Annotated[float, Field(gt=0)] | None = None
    description: str = ""

    @field_validator("normalizer")
    @classmethod
    def _normalizer(cls, v: Any) -> Any:
        return _check(parse_normalizer, v, "normalizer")

    def spec(self) -> CascadeSpec:
        """This section as the one cascade description the simulator and calibration use (``provider:`` dropped)."""
        from ..core.spec import CascadeSpec

        return CascadeSpec.from_config(self)


class PricesConfig(_Model):
    """The price table: the shipped one ("default"), a file in the same format, plus inline entries.

    An inline entry has the shipped format too (``input``/``output`` USD per 1M tokens, ``source``, ``as_of`` ...), so
    a price without its source is refused here as in the table.
    """

    path: str = "default"
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    strict: bool = False
    fallback: Literal["litellm"] | None = "litellm"


class LedgerConfig(_Model):
    """Where spend is stored: "default" (the per-user SQLite file, or $LLM_CASCADE_LEDGER), a path, ``sqlite:///path``
    or any SQLAlchemy URL; several processes share one PostgreSQL database (``postgresql+psycopg://...``)."""

    url: str
    table: str = "llm_cascade_calls"
    # The write-ahead journal's folder (see llm_cascade.spend.journal); None: ledger.default_journal_dir
    # (memory-backed).
    journal: str | None = None
    # Rows kept in memory while the database is down; past it the oldest spill to ``spill`` (a folder; None: the
    # data folder), never refusing a request whose calls were made (llm_cascade.spend.spill).
    max_backlog: int = 100_000
    spill: str | None = None


class CacheConfig(_Model):
    """The response cache (:mod:`llm_cascade.core.cache`): exact-match answers to repeated requests, recorded as
    ``cache_hit`` rows of cost 0. ``memory``: in this process; ``ledger``: a table in the ledger's database (``url``:
    another database than ``[ledger]``'s), shared by every process on it; ``redis``: the Redis server at ``url``.
    Each cascade has its own entries (the cascade's name is part of the key)."""

    backend: Literal["memory", "ledger", "redis"] = "memory"
    ttl: Annotated[float, Field(gt=0)] | None = 3600.0
    maxsize: Annotated[int, Field(ge=1)] = 10_000
    url: str | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 2.0


class ShadowConfig(_Model):
    """Shadow sampling (:mod:`llm_cascade.core.shadow`): on a ``rate`` share of requests, every model of ``pool``
    (default: every member of the cascade; models outside it allowed, as members are written) answers too, in the
    background, and the ledger keeps what each said. ``limit_usd`` caps the shadow calls' cost per UTC day."""

    rate: Annotated[float, Field(ge=0, le=1)]
    pool: list[str | MemberConfig] | None = None
    limit_usd: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)] | None = None
    concurrency: Annotated[int, Field(ge=1)] = 4
    refresh_s: Annotated[float, Field(ge=0)] = 5.0  # how often the day's shadow spend is read from the ledger
    max_pending: Annotated[int, Field(ge=1)] = 1000
    store_text: bool = False

    @field_validator("pool", mode="before")
    @classmethod
    def _pool(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [MemberConfig(model=m) if isinstance(m, str) else m for m in v]
        return v


class AuditConfig(_Model):
    """What ``/health`` reports of the deployed cascade on its shadowed requests (``llm-cascade audit``): fidelity to
    ``reference`` over the last ``window_hours``, ``degraded`` when below ``min_fidelity`` with its whole 95%
    interval. Recomputed at most every ``every_s`` seconds (it reads the ledger)."""

    reference: str
    min_fidelity: Annotated[float, Field(ge=0, le=1)] | None = None
    window_hours: Annotated[float, Field(gt=0)] = 24.0
    every_s: Annotated[float, Field(ge=0)] = 60.0


class LimitConfig(_Model):
    """At most ``usd`` per period for requests carrying every one of ``tags`` (e.g. ``{key = "team-a"}``)."""

    usd: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
    per: Literal["request", "hour", "day", "week", "month", "total"] = "day"
    tags: dict[str, str] = Field(default_factory=dict)


class BudgetsConfig(_Model):
    """Spending limits checked before each escalation; ``policy`` says what a stop does (see :mod:`.budget`)."""

    limits: Annotated[list[LimitConfig], Field(min_length=1)]
    policy: Literal["best_so_far", "raise"] = "best_so_far"
    unknown_price: Literal["refuse", "allow"] = "refuse"
    output_tokens: Annotated[int, Field(ge=0)] | None = None
    # Budget counters in the ledger's database, for several processes on one ledger (default: a PostgreSQL ledger
    # yes, a SQLite file no; true for several processes sharing one SQLite file). See llm_cascade.spend.reservations.
    shared: bool | None = None
    gate_first_tier: bool = True


class KeyConfig(_Model):
    """A bearer key the proxy accepts, given as the NAME of the variable holding it or as its SHA-256 hex digest.

    ``tags`` go with every request made with the key (to the ledger and budgets); ``name`` is added as tag ``key``.
    """

    name: str
    env: str | None = None
    sha256: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    admin: bool = False  # may POST /admin/reload (llm_cascade.serve.reload)

    @model_validator(mode="after")
    def _one_source(self) -> KeyConfig:
        if (self.env is None) == (self.sha256 is None):
            raise ValueError("give exactly one of env (a variable name) or sha256 (the key's hex digest)")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256):
            raise ValueError("sha256 must be 64 hex digits")
        if self.env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.env):
            raise ValueError("env must be the NAME of an environment variable (never the key itself)")
        taken = "key" if "key" in self.tags else reserved_tag(self.tags)
        if taken is not None:  # "key" is the key's name, added by the proxy; the rest the library writes itself
            raise ValueError(f"tags.{taken}: the tag {taken!r} is set by llm-cascade itself, choose another name")
        return self

    def digest(self) -> str:
        """The SHA-256 hex digest of the key (reads the environment for ``env`` keys)."""
        if self.sha256 is not None:
            return self.sha256.lower()
        assert self.env is not None
        value = os.environ.get(self.env)
        if not value:
            raise ConfigError(f"server.keys.{self.name}.env", f"environment variable {self.env} is not set")
        return hash_key(value)


class ServerConfig(_Model):
    """Proxy settings: listen address, request body limit, bearer keys (none = no authentication)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    max_body_bytes: Annotated[int, Field(gt=0)] = 1_000_000
    keys: list[KeyConfig] = Field(default_factory=list)
    budget_status: Literal[402, 429] = 402

    @field_validator("keys")
    @classmethod
    def _unique(cls, v: list[KeyConfig]) -> list[KeyConfig]:
        names = [k.name for k in v]
        if len(set(names)) != len(names):
            raise ValueError(f"key names must be distinct, got {names}")
        return v


class Config(_Model):
    """The whole file."""

    cascades: Annotated[dict[str, CascadeConfig], Field(min_length=1)]
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    prices: PricesConfig | None = None
    ledger: LedgerConfig | None = None
    budgets: BudgetsConfig | None = None
    resilience: ResilienceConfig | None = None
    shadow: ShadowConfig | None = None
    cache: CacheConfig | None = None
    audit: AuditConfig | None = None
    server: ServerConfig = Field(default_factory=ServerConfig)

    @field_validator("prices", mode="before")
    @classmethod
    def _prices_path(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("ledger", mode="before")
    @classmethod
    def _ledger_url(cls, v: Any) -> Any:
        return {"url": v} if isinstance(v, str) else v


def hash_key(key: str) -> str:
    """The digest to write in ``server.keys[].sha256`` (``llm-cascade`` never needs the key itself in a file)."""
    return hashlib.sha256(key.encode()).hexdigest()


# -- loading ---------------------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(path or "<root>", f"environment variable {name} is not set (write ${{{name}:-default}})")

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def parse_config(data: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed mapping (after ``${VAR}`` interpolation); raise ConfigError on the first problem."""
    if not isinstance(data, Mapping):
        raise ConfigError("<root>", f"expected a table at the top level, got {type(data).__name__}")
    data = _interpolate(dict(data), os.environ if env is None else env, "")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        msg = str(first["msg"]).removeprefix("Value error, ")
        loc = tuple(first["loc"])
        cause = first.get("ctx", {}).get("error")
        if isinstance(cause, FieldProblem):
            loc, msg = (*loc, cause.sub), cause.problem
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(_loc(loc), msg + more) from None
    check_limit_keys(cfg.resilience, cfg.providers)
    return cfg


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML (or, with PyYAML, YAML) configuration file.

    ``env`` replaces ``os.environ`` for ``${VAR}`` interpolation (e.g. a test server's base URL). A relative
    ``prices.path`` is read relative to the file.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError("config", f"cannot read {p}: {exc.strerror or exc}") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MissingDependencyError("pyyaml", "server") from None
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError("config", f"{p} is not valid YAML: {exc}") from None
    else:
        try:
            data = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("config", f"{p} is not valid TOML: {exc}") from None
    if data is None:
        data = {}
    cfg = parse_config(data, env=env)
    if cfg.prices is not None and cfg.prices.path != "default" and not Path(cfg.prices.path).is_absolute():
        prices = cfg.prices.model_copy(update={"path": str(p.parent / cfg.prices.path)})
        cfg = cfg.model_copy(update={"prices": prices})
    return cfg


# -- building --------------------------------------------------------------------------------------------------------


class Components:
    """The pieces every cascade of one file shares: prices, ledger and budgets (each may be None), and the rate
    limits and circuit breakers of :class:`~llm_cascade.resilience.limits.Resilience` (one quota per provider across
    all cascades)."""

    def __init__(
        self,
        prices: Pricer | None = None,
        ledger: SpendSink | None = None,
        budget: Guard | None = None,
        resilience: Resilience | None = None,
        cache: Any = None,
    ):
        self.prices = prices
        self.ledger = ledger
        self.budget = budget
        self.resilience = resilience
        self.cache = cache  # the [cache] section's shared backend (a CacheBackend), None for memory or none

    def close(self) -> None:
        """Close the ledger's and the cache table's connections, when they have any."""
        for part in (self.cache, self.ledger):
            close = getattr(part, "close", None)
            if callable(close):
                close()


def build_components(cfg: Config, *, sleep: Sleep | None = None, clock: Clock | None = None) -> Components:
    """Build the price table, ledger, budgets, limits and breakers named in the file (their modules are imported only
    when used). ``sleep`` and ``clock`` replace ``asyncio.sleep`` and ``time.monotonic`` in retries, throttles and
    breakers: tests pass fakes so that back-offs and cool-downs take no time."""
    prices = _build_prices(cfg.prices) if cfg.prices is not None else None
    ledger = _build_ledger(cfg.ledger) if cfg.ledger is not None else None
    budget = _build_budget(cfg.budgets, ledger, prices) if cfg.budgets is not None else None
    resilience = Resilience.from_config(
        cfg.resilience, cfg.providers, sleep=sleep or asyncio.sleep, clock=clock or time.monotonic
    )
    cache = _build_cache_backend(cfg.cache, cfg.ledger) if cfg.cache is not None else None
    return Components(prices, ledger, budget, resilience, cache)


def _build_cache_backend(cc: CacheConfig, lc: LedgerConfig | None) -> Any:
    """The shared store of a ``ledger`` or ``redis`` cache (None for ``memory``): one for all cascades."""
    if cc.backend == "memory":
        return None
    if cc.backend == "redis":
        from ..core.cache_redis import RedisCache

        return RedisCache(cc.url or "redis://localhost:6379/0")
    from ..spend.cachestore import DatabaseCache
    from ..spend.ledger import default_path

    if cc.url is None and lc is None:
        raise ConfigError("cache.backend", "'ledger' keeps answers in the ledger's database: add [ledger] or cache.url")
    url = cc.url or (lc.url if lc is not None else "default")
    try:
        return DatabaseCache(
            default_path() if url == "default" else url,
            table=lc.table if lc is not None else "llm_cascade_calls",
            maxsize=cc.maxsize,
        )
    except ConfigError as exc:
        raise ConfigError(f"cache.{exc.field.removeprefix('DatabaseCache.')}", exc.problem) from None


def _build_cache(cc: CacheConfig, comp: Components, cascade: str) -> Any:
    """The cascade's response cache: its own in memory, or its namespace in the file's shared store."""
    if comp.cache is None:
        from ..core.cache import ResponseCache

        return ResponseCache(maxsize=cc.maxsize, ttl=cc.ttl)
    from ..core.cache_shared import SharedCache

    return SharedCache(comp.cache, ttl=cc.ttl, timeout_s=cc.timeout_s, namespace=cascade)


def _build_prices(pc: PricesConfig) -> Pricer:
    from ..core.errors import PriceError
    from ..spend.pricing import PriceTable

    try:
        if pc.path == "default":
            table = PriceTable.default(strict=pc.strict, fallback=pc.fallback)
        else:
            table = PriceTable.load(pc.path, strict=pc.strict, fallback=pc.fallback)
    except PriceError as exc:
        raise ConfigError("prices.path", str(exc)) from None
    for name, entry in pc.overrides.items():
        try:
            table.add(name, entry)
        except PriceError as exc:
            raise ConfigError(f"prices.overrides.{name}", str(exc)) from None
    return table


def _build_ledger(lc: LedgerConfig) -> SpendSink:
    from ..core.errors import LedgerError
    from ..spend.ledger import Ledger

    try:
        return Ledger(
            None if lc.url == "default" else lc.url,
            table=lc.table,
            journal=lc.journal,
            max_backlog=lc.max_backlog,
            spill=lc.spill,
        )
    except ConfigError as exc:
        raise ConfigError(f"ledger.{exc.field.removeprefix('Ledger.')}", exc.problem) from None
    except LedgerError as exc:
        raise ConfigError("ledger.url", str(exc)) from None


def _build_budget(bc: BudgetsConfig, ledger: SpendSink | None, prices: Pricer | None) -> Guard:
    from ..spend.budget import Budget, Limit
    from ..spend.ledger import Ledger
    from ..spend.pricing import PriceTable

    if any(lim.per != "request" for lim in bc.limits) and not isinstance(ledger, Ledger):
        raise ConfigError("budgets.limits", "a per-period limit needs a ledger (set ledger.url)")
    try:
        return Budget(
            [Limit(lim.usd, lim.per, lim.tags) for lim in bc.limits],
            ledger=ledger if isinstance(ledger, Ledger) else None,
            prices=prices if isinstance(prices, PriceTable) else None,
            policy=bc.policy,
            output_tokens=bc.output_tokens,
            unknown_price=bc.unknown_price,
            shared=bc.shared,
            gate_first_tier=bc.gate_first_tier,
        )
    except ConfigError as exc:
        raise ConfigError(f"budgets.{exc.field.removeprefix('Budget.').removeprefix('Limit.')}", exc.problem) from None


def _member(spec: MemberConfig, cfg: Config, field: str) -> tuple[str, Backend]:
    provider, model = split_name(spec.model)
    prov = cfg.providers.get(provider)
    kind = provider
    options: dict[str, Any] = {}
    base_url, key_env = spec.base_url, spec.api_key_env
    if prov is not None:
        kind = prov.type or provider
        options.update(prov.options)
        base_url = base_url or prov.base_url
        key_env = key_env or prov.api_key_env
    options.update(spec.options)
    if spec.price is not None or spec.price_per_hour is not None:
        options["price" if kind != "hf" else "price_per_hour"] = _member_price(spec, kind, field)
    if kind != provider:
        options.setdefault("name", spec.model)  # calls and the ledger say "recorded:gpt-4o", as the file does
    if base_url is not None:
        options["base_url"] = base_url
        from ..backends.openai import lean_available

        if kind == "openai" and "transport" not in options and lean_available():
            options["transport"] = "http"  # an OpenAI-compatible upstream: the lean transport (backends/http.py)
    if key_env is not None:
        options["api_key_env"] = key_env  # the backend reads the variable itself: the key never enters the config
    try:
        return provider, resolve(f"{kind}:{model}", **options)
    except ConfigError as exc:
        raise ConfigError(f"{field}.{exc.field}" if exc.field != "backend" else field, exc.problem) from None
    except TypeError as exc:
        raise ConfigError(field, f"the {kind!r} backend rejected its options: {exc}") from None


def _member_price(spec: MemberConfig, kind: str, field: str) -> Any:
    from ..core.errors import PriceError
    from ..spend.pricing import Price

    if spec.price is not None and spec.price_per_hour is not None:
        raise ConfigError(f"{field}.price", "give price or price_per_hour, not both")
    if kind == "hf":  # the local classifier prices its own compute seconds
        if spec.price is not None:
            raise ConfigError(f"{field}.price", "an hf member is priced by the hour: use price_per_hour")
        return spec.price_per_hour
    try:
        if spec.price_per_hour is not None:
            return Price(per_hour=spec.price_per_hour, source="price_per_hour in the config")
        return Price(**{"source": "price in the config", **(spec.price or {})})
    except (PriceError, TypeError) as exc:
        raise ConfigError(f"{field}.price", str(exc)) from None


def build_router(cfg: Config, cascade: str, *, components: Components | None = None, **overrides: Any) -> Router:
    """The Router for one cascade of the file. Pass ``components`` to share one ledger between several routers."""
    from ..core.router import Router, Tier

    try:
        cc = cfg.cascades[cascade]
    except KeyError:
        raise ConfigError(
            "cascades", f"no cascade {cascade!r}; configured: {', '.join(sorted(cfg.cascades))}"
        ) from None
    comp = components if components is not None else build_components(cfg)
    if comp.resilience is None:
        comp.resilience = Resilience.from_config(cfg.resilience, cfg.providers)
    tiers: list[Tier] = []
    for i, tc in enumerate(cc.tiers):
        field = f"cascades.{cascade}.tiers[{i}]"
        members: list[Backend] = []
        for j, m in enumerate(tc.members):
            provider, backend = _member(m, cfg, f"{field}.members[{j}]")
            members.append(comp.resilience.wrap(backend, provider=provider, retry=tc.retry, field=f"{field}.retry"))
        try:
            tiers.append(
                Tier(
                    members,
                    parse_rule(tc.rule, f"{field}.rule"),
                    name=tc.name,
                    timeout=tc.timeout,
                    first_token_timeout=None if tc.first_token_timeout == "off" else tc.first_token_timeout,
                    on_error=tc.on_error,
                    on_refusal=tc.on_refusal,
                    normalizer=None
                    if tc.normalizer is None
                    else parse_normalizer(tc.normalizer, f"{field}.normalizer"),
                )
            )
        except ConfigError as exc:
            if exc.field.startswith("cascades."):
                raise
            raise ConfigError(f"{field}.{exc.field.removeprefix('Tier.')}", exc.problem) from None
    kwargs: dict[str, Any] = {
        "normalizer": parse_normalizer(cc.normalizer, f"cascades.{cascade}.normalizer"),
        "prices": comp.prices,
        "ledger": comp.ledger,
        "budget": comp.budget,
        "timeout": cc.timeout,
        "name": cascade,
        "retry": None,  # the file's retry settings already wrapped each member (default on, `retry = false` off)
    }
    if cfg.shadow is not None and "shadow" not in overrides:
        kwargs["shadow"] = _build_shadow(cfg, cfg.shadow, comp, cascade)
    if cfg.cache is not None and "cache" not in overrides:
        kwargs["cache"] = _build_cache(cfg.cache, comp, cascade)
    kwargs.update(overrides)
    try:
        return Router(tiers, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"cascades.{cascade}.{exc.field.removeprefix('Router.')}", exc.problem) from None


def _build_shadow(cfg: Config, sc: ShadowConfig, comp: Components, cascade: str) -> Any:
    """The cascade's Shadow: pool members outside the cascade built like members (provider, price, resilience)."""
    from ..core.shadow import Shadow

    pool: list[Any] | None = None
    if sc.pool is not None:
        pool = []
        members = {m.model for tc in cfg.cascades[cascade].tiers for m in tc.members if isinstance(m, MemberConfig)}
        for j, m in enumerate(sc.pool):
            assert isinstance(m, MemberConfig)
            if m.model in members:  # the cascade's own member: Shadow.bind reuses it by name
                pool.append(m.model)
                continue
            provider, backend = _member(m, cfg, f"shadow.pool[{j}]")
            assert comp.resilience is not None
            pool.append(comp.resilience.wrap(backend, provider=provider, retry=None, field=f"shadow.pool[{j}]"))
    try:
        return Shadow(
            sc.rate,
            pool,
            limit_usd=sc.limit_usd,
            concurrency=sc.concurrency,
            refresh_s=sc.refresh_s,
            max_pending=sc.max_pending,
            store_text=sc.store_text,
            reference=cfg.audit.reference if cfg.audit is not None else None,
        )
    except ConfigError as exc:
        raise ConfigError(f"shadow.{exc.field.removeprefix('Shadow.')}", exc.problem) from None


def build_routers(cfg: Config, components: Components | None = None) -> dict[str, Router]:
    """One Router per cascade, all sharing one set of prices, ledger and budgets."""
    comp = components if components is not None else build_components(cfg)
    return {name: build_router(cfg, name, components=comp) for name in cfg.cascades}
