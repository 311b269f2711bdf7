"""Prices: what one call cost, in exact decimal dollars, from a sourced table shipped inside the package.

The table (``llm_cascade/data/prices.json``) holds one entry per model: USD per 1M input, cached-input and output
tokens, a per-call fee, an optional per-hour price for local compute, the ``source`` of the price and the date it was
read (``as_of``). Every entry is validated when the table loads, so a typo fails at start-up, not on the first bill.

Why Decimal: costs are summed over millions of calls and compared to budgets; binary floats drift. Why None for an
unknown price: a silent 0 makes a cascade look free. Cached tokens are a *part* of the input tokens (as providers
report them) and are priced at the cached price, never counted twice.

When a model is missing from our table and litellm is installed, its bundled cost map is read (once, lazily, from
the JSON file in the installed package: litellm itself is never imported and nothing is downloaded).
"""

from __future__ import annotations

import datetime
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .._packages import package_path
from ..core.errors import PriceError
from ..core.types import Usage

MILLION = Decimal(1_000_000)
_DATE = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")
_LITELLM_MAP = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """The price of one model. Token prices are USD per 1M tokens; ``cached_input`` None means no cache discount."""

    input: Decimal
    output: Decimal
    source: str
    as_of: str
    cached_input: Decimal | None = None
    per_request: Decimal = Decimal(0)
    per_hour: Decimal | None = None
    provider: str = ""
    aliases: tuple[str, ...] = field(default=())
    # The token prices as integers at one common exponent, for :meth:`cost`'s integer path (None: not applicable).
    _scaled: tuple[int, int, int, int, bool, Decimal] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_scaled", _scaled(self))

    def cost(self, usage: Usage, seconds: float | None = None) -> Decimal:
        """Exact cost of one call. A call that billed no tokens (rejected before the model ran) pays no fee."""
        scaled = self._scaled
        if scaled is not None and (seconds is None or self.per_hour is None):
            # The same Decimal as the arithmetic below (value and exponent), from integer products: the token sums
            # are exact integers at the prices' common exponent, and a division by 10**6 only moves the point and
            # drops trailing zeros down to that exponent. A third of the Decimal version's time, on every call.
            inp, cin, out, exp, fee, scale = scaled
            tokens = usage.input_tokens
            fresh = tokens if tokens > 0 else 0
            cached = usage.cached_tokens
            output = usage.output_tokens
            output = output if output > 0 else 0
            if cached > 0:
                cached = fresh if cached > fresh else cached
                n = (fresh - cached) * inp + cached * cin + output * out
            else:
                n = fresh * inp + output * out
            if n < _EXACT:
                if n % 10:  # most sums: no trailing zero to drop (a product by 10**e is scaleb(e), a third cheaper)
                    total = Decimal(n) * scale
                elif n:
                    shift = -6
                    while shift < 0 and not n % 10:
                        n //= 10
                        shift += 1
                    total = Decimal(n) * _SCALE[exp + shift]
                else:
                    total = _ZEROS[exp] if exp in _ZEROS else Decimal(0).scaleb(exp)
                if fee and (tokens > 0 or output > 0):
                    total += self.per_request
                return total
        cached = min(max(usage.cached_tokens, 0), max(usage.input_tokens, 0))
        fresh = max(usage.input_tokens, 0) - cached
        cached_price = self.input if self.cached_input is None else self.cached_input
        total = (fresh * self.input + cached * cached_price + max(usage.output_tokens, 0) * self.output) / MILLION
        if usage.input_tokens > 0 or usage.output_tokens > 0:
            total += self.per_request
        if seconds is not None and self.per_hour is not None:
            total += self.per_hour * Decimal(repr(float(seconds))) / 3600
        return total

    @classmethod
    def local(cls, usd_per_hour: Decimal | float | str, *, source: str, as_of: str) -> PriceEntry:
        """A locally run model priced by compute time (GPU $/hour × seconds); tokens are free."""
        return cls(Decimal(0), Decimal(0), source, as_of, per_hour=_decimal("per_hour", usd_per_hour, "local"))


_EXACT = 10**27  # below it, Decimal's default 28 digits hold the products exactly (the integer path applies)
_ZEROS = {e: Decimal(0).scaleb(e) for e in range(-12, 1)}
_SCALE = {e: Decimal(f"1E{e}") for e in range(-18, 1)}  # Decimal(n) * _SCALE[e]: n at exponent e, exactly (n < _EXACT)


def _scaled(entry: PriceEntry) -> tuple[int, int, int, int, bool, Decimal] | None:
    """(input, cached input, output) as integers at their common exponent, that exponent, whether the fee must be
    added (a zero fee whose exponent cannot change the sum's is not), and 10 ** (exponent - 6), the scale of a sum
    per million tokens: :meth:`PriceEntry.cost`'s integer path.
    None for prices that are not plain finite decimals (the Decimal arithmetic then handles them)."""
    cached = entry.input if entry.cached_input is None else entry.cached_input
    prices = (entry.input, cached, entry.output)
    if not all(isinstance(p, Decimal) and p.is_finite() for p in (*prices, entry.per_request)):
        return None
    exps = [int(p.as_tuple().exponent) for p in prices]
    exp = min(exps)
    if exp > 0 or exp < -12:
        return None
    ints = [int(p.scaleb(-exp)) for p in prices]
    fee = entry.per_request
    add = not (fee.is_zero() and int(fee.as_tuple().exponent) >= exp)
    return ints[0], ints[1], ints[2], exp, add, _SCALE[exp - 6]


def _decimal(name: str, value: Any, model: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise PriceError(f"price entry {model!r}: field {name!r} must be a number, got {value!r}")
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise PriceError(f"price entry {model!r}: field {name!r} must be a number, got {value!r}") from None
    if not d.is_finite() or d < 0:
        raise PriceError(f"price entry {model!r}: field {name!r} must be a finite number >= 0, got {value!r}")
    return d


_FIELDS = {"input", "output", "cached_input", "per_request", "per_hour", "source", "as_of", "provider", "aliases"}


def parse_entry(model: str, raw: Any) -> PriceEntry:
    """Validate one table entry; the PriceError names the model and the field."""
    if not isinstance(raw, Mapping):
        raise PriceError(f"price entry {model!r}: must be an object, got {type(raw).__name__}")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise PriceError(f"price entry {model!r}: unknown field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    for name in ("source", "as_of"):
        value = raw.get(name)
        if not isinstance(value, str) or not value.strip():
            raise PriceError(f"price entry {model!r}: field {name!r} is required (where and when the price was read)")
    if not _DATE.match(raw["as_of"]):
        raise PriceError(f"price entry {model!r}: field 'as_of' must be a date YYYY-MM-DD or YYYY-MM")
    local = "per_hour" in raw
    for name in ("input", "output"):
        if name not in raw and not local:
            raise PriceError(f"price entry {model!r}: field {name!r} is required (USD per 1M tokens)")
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise PriceError(f"price entry {model!r}: field 'aliases' must be a list of names")
    opt = {k: _decimal(k, raw[k], model) for k in ("cached_input", "per_hour") if raw.get(k) is not None}
    return PriceEntry(
        input=_decimal("input", raw.get("input", 0), model),
        output=_decimal("output", raw.get("output", 0), model),
        source=raw["source"],
        as_of=raw["as_of"],
        cached_input=opt.get("cached_input"),
        per_request=_decimal("per_request", raw.get("per_request", 0), model),
        per_hour=opt.get("per_hour"),
        provider=str(raw.get("provider", "")),
        aliases=tuple(aliases),
    )


def candidates(model: str) -> list[str]:
    """Names to try, most specific first: "litellm:openai/gpt-4o" -> itself, "openai/gpt-4o", "gpt-4o"."""
    out = [model]
    provider, sep, rest = model.partition(":")
    if sep and rest and "/" not in provider and "." not in provider:
        out.append(rest)
    name = out[-1]
    while "/" in name:
        name = name.split("/", 1)[1]
        out.append(name)
    return [c.lower() for c in out]


class PriceTable:
    """Model prices with alias lookup. ``cost(model, usage)`` is what the router calls for every call.

    ``strict=True`` raises :class:`PriceError` for an unknown model instead of returning None. ``fallback="litellm"``
    consults litellm's bundled cost map (read from its JSON file, never imported) for models missing here.
    """

    def __init__(
        self,
        entries: Mapping[str, PriceEntry | Mapping[str, Any]] | None = None,
        *,
        strict: bool = False,
        fallback: str | None = "litellm",
    ) -> None:
        if fallback not in (None, "litellm"):
            raise PriceError(f"PriceTable.fallback must be None or 'litellm', got {fallback!r}")
        self.strict = strict
        self.fallback = fallback
        self._entries: dict[str, PriceEntry] = {}
        self._index: dict[str, str] = {}
        self._litellm: dict[str, PriceEntry | None] | None = None
        self._lock = threading.Lock()
        self._found: dict[str, PriceEntry | None] = {}  # lookups by the exact name asked (cleared by add)
        # (model, input, output, cached) -> cost: a request prices the same estimate for its journal intent and its
        # budget check, and a service the same few prompt shapes: the Decimal arithmetic is done once (cleared by add)
        self._costs: dict[tuple[str, int, int, int], Decimal | None] = {}
        self.version = 0  # bumped by every add(): what callers that cache costs compare
        for name, raw in (entries or {}).items():
            self.add(name, raw)

    @classmethod
    def load(cls, path: str | Path, **options: Any) -> PriceTable:
        """Load a table file in the shipped format (``{"models": {name: entry}}``)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PriceError(f"cannot read price table {path}: {exc}") from None
        return cls.from_json(text, origin=str(path), **options)

    @classmethod
    def from_json(cls, text: str, *, origin: str = "<string>", **options: Any) -> PriceTable:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PriceError(f"price table {origin} is not valid JSON: {exc}") from None
        models = doc.get("models") if isinstance(doc, dict) else None
        if not isinstance(models, dict):
            raise PriceError(f"price table {origin}: expected an object with a 'models' object")
        return cls(models, **options)

    @classmethod
    def default(cls, **options: Any) -> PriceTable:
        """The table shipped inside the package."""
        return cls.load(Path(__file__).parent.parent / "data" / "prices.json", **options)

    def add(self, name: str, entry: PriceEntry | Mapping[str, Any]) -> None:
        """Add or replace one model's price (e.g. a local model priced per hour of compute)."""
        if not isinstance(name, str) or not name:
            raise PriceError(f"price entry name must be a non-empty string, got {name!r}")
        parsed = entry if isinstance(entry, PriceEntry) else parse_entry(name, entry)
        self._found.clear()
        self._costs.clear()
        self.version += 1
        self._entries[name] = parsed
        for alias in (name, *parsed.aliases):
            owner = self._index.get(alias.lower())
            if owner is not None and owner != name:
                raise PriceError(f"price entry {name!r}: alias {alias!r} already names {owner!r}")
            self._index[alias.lower()] = name

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.lookup(model) is not None

    def __len__(self) -> int:
        return len(self._entries)

    def models(self) -> list[str]:
        return sorted(self._entries)

    def lookup(self, model: str) -> PriceEntry | None:
        """The entry for a model or any alias of it; prefixes such as "openai:" or "openai/" are ignored."""
        try:
            return self._found[model]  # the router prices the same few names on every request
        except KeyError:
            pass
        found = self._lookup(model)
        if len(self._found) < 10_000:
            self._found[model] = found
        return found

    def _lookup(self, model: str) -> PriceEntry | None:
        names = candidates(model)
        for c in names:
            hit = self._index.get(c)
            if hit is not None:
                return self._entries[hit]
        if self.fallback == "litellm":
            bundled = self._litellm_map()
            for c in names:
                entry = bundled.get(c)
                if entry is not None:
                    return entry
        return None

    def entry(self, model: str) -> PriceEntry:
        """Like :meth:`lookup`, but an unknown model is a PriceError."""
        found = self.lookup(model)
        if found is None:
            raise PriceError(f"no price for model {model!r} (add it to the price table, with its source)")
        return found

    def cost(self, model: str, usage: Usage, seconds: float | None = None) -> Decimal | None:
        """Exact cost of one call, or None when the price is unknown (PriceError in strict mode)."""
        if seconds is None:
            key = (model, usage.input_tokens, usage.output_tokens, usage.cached_tokens)
            try:
                return self._costs[key]
            except KeyError:
                pass
        found = self.entry(model) if self.strict else self.lookup(model)
        cost = None if found is None else found.cost(usage, seconds)
        if seconds is None:
            if len(self._costs) >= 10_000:
                self._costs.clear()
            self._costs[key] = cost
        return cost

    def price(self, model: str, tokens_in: int, tokens_out: int, cached: int = 0) -> Decimal | None:
        """Convenience: the cost of one call with these token counts."""
        return self.cost(model, Usage(tokens_in, tokens_out, cached))

    def _litellm_map(self) -> dict[str, PriceEntry | None]:
        with self._lock:
            if self._litellm is None:
                self._litellm = read_litellm_map()
            return self._litellm


_SHIPPED: PriceTable | None = None


def shipped_prices() -> PriceTable:
    """The shipped table, loaded once per process and shared: what a Router prices its calls with when given no
    ``prices`` (prices are opt-out: ``Router(..., prices=False)``). Add to it with :meth:`PriceTable.add` only if every
    Router in the process should see the price; otherwise pass a table of your own."""
    global _SHIPPED
    if _SHIPPED is None:
        _SHIPPED = PriceTable.default()
    return _SHIPPED


def Price(
    input: Decimal | float | str = 0,
    output: Decimal | float | str = 0,
    *,
    cached_input: Decimal | float | str | None = None,
    per_request: Decimal | float | str = 0,
    per_hour: Decimal | float | str | None = None,
    source: str = "declared next to the member",
    as_of: str | None = None,
) -> PriceEntry:
    """A member's own price (USD per 1M tokens, per request, or per hour of local compute), used before any table:
    a local server is priced 0 or by the hour, a negotiated rate overrides the list price."""
    raw: dict[str, Any] = {
        "input": input,
        "output": output,
        "per_request": per_request,
        "source": source,
        "as_of": as_of or datetime.date.today().isoformat(),
    }
    if cached_input is not None:
        raw["cached_input"] = cached_input
    if per_hour is not None:
        raw["per_hour"] = per_hour
    return parse_entry("price", raw)


def litellm_map_path() -> Path | None:
    """Where the installed litellm keeps its bundled cost map, found without importing litellm."""
    path = package_path("litellm", _LITELLM_MAP)
    return path if path is not None and path.is_file() else None


def read_litellm_map(path: Path | None = None) -> dict[str, PriceEntry | None]:
    """litellm's bundled map as PriceEntries keyed by lowercased name; models without token prices are skipped."""
    path = path or litellm_map_path()
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    version = _litellm_version(path)
    out: dict[str, PriceEntry | None] = {}
    for key, spec in raw.items():
        if not isinstance(spec, dict) or key == "sample_spec":
            continue
        try:
            entry = _from_litellm(key, spec, version)
        except PriceError:
            continue
        if entry is not None:
            out.setdefault(key.lower(), entry)
    return out


def _from_litellm(key: str, spec: Mapping[str, Any], version: str) -> PriceEntry | None:
    per_token_in, per_token_out = spec.get("input_cost_per_token"), spec.get("output_cost_per_token")
    if per_token_in is None or per_token_out is None:
        return None
    cached = spec.get("cache_read_input_token_cost")
    return PriceEntry(
        input=_decimal("input_cost_per_token", per_token_in, key) * MILLION,
        output=_decimal("output_cost_per_token", per_token_out, key) * MILLION,
        source=f"litellm bundled cost map (litellm {version}, {_LITELLM_MAP}, key {key!r})",
        as_of=f"litellm-{version}",
        cached_input=None if cached is None else _decimal("cache_read_input_token_cost", cached, key) * MILLION,
        per_request=_decimal("input_cost_per_request", spec.get("input_cost_per_request") or 0, key),
        provider=str(spec.get("litellm_provider", "")),
    )


def _litellm_version(path: Path) -> str:
    for dist in path.parent.parent.glob("litellm-*.dist-info"):
        return dist.name.removeprefix("litellm-").removesuffix(".dist-info")
    return "unknown"


def format_usd(value: Decimal | None, places: int = 6) -> str:
    """A cost for people: "$0.000133", or "unknown" for None (never "$0")."""
    if value is None:
        return "unknown"
    return f"${value:.{places}f}"


def total(costs: Iterable[Decimal | None]) -> Decimal | None:
    """Sum of costs; None as soon as one is unknown."""
    acc = Decimal(0)
    for c in costs:
        if c is None:
            return None
        acc += c
    return acc
