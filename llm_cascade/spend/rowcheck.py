"""What a ledger row may hold, so that no value can stop the writer: one bad row must never block every other.

A row reaches the database from the router (a provider's error text, its token counts, tags a caller chose) and from
a journal left by a dead process. Values the database refuses made whole batches fail: a NUL in an error message
(PostgreSQL text), a lone surrogate (SQLite's UTF-8 encoder), a token count of 2**31 (PostgreSQL ``INTEGER``), a NaN
latency (SQLite stores it as NULL, against ``NOT NULL``). :func:`clean` makes every row storable, on the writer
thread: text without NUL or lone surrogates and of bounded length, integers clamped to their column's range, floats
finite. It also works out ``cost_pusd`` (integer pico-dollars) from ``cost_usd`` where a row leaves it None, as the
ledger's rows do: the conversion runs here, on the writer thread, not on the event loop that built the row.
:func:`problem` says why a row read from a journal file is not one this library wrote (the journal's replay refuses
it, rather than storing a crafted credit or a lockout).
"""

from __future__ import annotations

import json
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

Row = tuple[Any, ...]
COLUMNS = 22  # the 17 of every call, then a shadowed request's answer, confidence, digest, prompt and text
BASE = 17  # rows journaled before the observation columns existed
INT32 = 2**31 - 1  # PostgreSQL INTEGER: seq, tier, token counts, attempt
INT64 = 2**63 - 1  # BIGINT: cost_pusd
_BIG = 1.7e308  # finite floats lie within +-_BIG: a NaN or an infinity fails `-_BIG <= v <= _BIG`
# Text columns -> the most characters kept (a provider's error text is cut, not refused).
TEXT_CAPS = {1: 200, 4: 256, 5: 32, 10: 64, 13: 4000, 16: 64, 17: 4000, 19: 200, 20: 1 << 20, 21: 1 << 20}
TAGS_CAP = 65536
_INTS = (2, 3, 6, 7, 8, 15)
_PICO = Decimal("1e12")
OUTCOMES = frozenset({"ok", "error", "timeout", "cancelled", "skipped", "rate_limited", "filtered", "cache_hit"})


def text(value: object, cap: int) -> str:
    """``value`` as text any database stores: at most ``cap`` characters, NUL and lone surrogates as U+FFFD."""
    s = value if isinstance(value, str) else str(value)
    if len(s) > cap:
        s = s[:cap]
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            s = s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return s


def _int(value: object, high: int, low: int = 0) -> int:
    if isinstance(value, int) and value.__class__ is int:
        v: int = value
    elif isinstance(value, bool | int) or (isinstance(value, float) and -_BIG <= value <= _BIG):
        v = int(value)
    else:
        return low
    return low if v < low else high if v > high else v


def _float(value: object) -> float:
    if isinstance(value, float) and -_BIG <= value <= _BIG:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        v = float(value) if abs(value) < 1e300 else 0.0
        return v if -_BIG <= v <= _BIG else 0.0
    return 0.0


def _pico(usd: object) -> int | None:
    """``cost_usd`` in integer pico-dollars (rounded half-even, as the ledger's ``to_pusd``), within BIGINT; None
    for no cost, or for text that is not a finite decimal (then stored as it is, its pico-dollars unknown)."""
    if usd is None:
        return None
    try:
        cost = Decimal(str(usd)[:64])
    except (InvalidOperation, ValueError):
        return None
    if not cost.is_finite():
        return None
    return _int(int((cost * _PICO).to_integral_value(ROUND_HALF_EVEN)), INT64, -INT64)


def _tags(value: object) -> str:
    s = text(value, TAGS_CAP + 1)
    if len(s) > TAGS_CAP:  # cut JSON is no JSON: say what was dropped instead
        return json.dumps({"llm_cascade.tags_dropped": f"{len(s)}+ characters"})
    return s


def clean(row: Row) -> Row:
    """``row`` with every value storable in its column (raises ValueError only for a row of the wrong width).

    The common row (plain ASCII text, counts in range) is checked in a few comparisons and returned as is, with its
    ``cost_pusd`` filled in when it has a cost without one (as the ledger builds its rows)."""
    if len(row) != COLUMNS:
        raise ValueError(f"a ledger row has {COLUMNS} values, this one {len(row)}")
    ts, rid, seq, tier, model, outcome, tin, tout, tcached, est, usd, pusd, lat, err, tags, attempt, finish = row[:BASE]
    answer, confidence, digest, prompt, said = row[BASE:]
    if pusd is None and usd is not None:
        pusd = _pico(usd)
        row = (*row[:11], pusd, *row[12:])
    if (
        ts.__class__ is float
        and lat.__class__ is float
        and -_BIG <= ts <= _BIG
        and -_BIG <= lat <= _BIG
        and seq.__class__ is tier.__class__ is tin.__class__ is tout.__class__ is int
        and tcached.__class__ is attempt.__class__ is int
        and 0 <= seq <= INT32
        and 0 <= tier <= INT32
        and 0 <= tin <= INT32
        and 0 <= tout <= INT32
        and 0 <= tcached <= INT32
        and 0 <= attempt <= INT32
        and (est == 0 or est == 1)
        and (pusd is None or (pusd.__class__ is int and -INT64 <= pusd <= INT64))
        and rid.__class__ is model.__class__ is outcome.__class__ is tags.__class__ is str
        and (usd is None or usd.__class__ is str)
        and (err is None or err.__class__ is str)
        and (finish is None or finish.__class__ is str)
        and len(rid) <= 200
        and len(model) <= 256
        and len(outcome) <= 32
        and len(tags) <= TAGS_CAP
        and (usd is None or len(usd) <= 64)
        and (err is None or len(err) <= 4000)
        and (finish is None or len(finish) <= 64)
        and _plain(rid + model + outcome + tags + (usd or "") + (err or "") + (finish or ""))
        and (answer is confidence is digest is prompt is said is None or _observed_ok(row))
    ):
        return row
    return (
        _float(ts),
        text(rid, TEXT_CAPS[1]),
        _int(seq, INT32),
        _int(tier, INT32),
        text(model, TEXT_CAPS[4]),
        text(outcome, TEXT_CAPS[5]),
        _int(tin, INT32),
        _int(tout, INT32),
        _int(tcached, INT32),
        1 if est else 0,
        None if usd is None else text(usd, TEXT_CAPS[10]),
        _pico(usd) if pusd is None else _int(pusd, INT64, -INT64),
        _float(lat),
        None if err is None else text(err, TEXT_CAPS[13]),
        _tags(tags),
        _int(attempt, INT32, 1),
        None if finish is None else text(finish, TEXT_CAPS[16]),
        *(None if v is None else text(v, TEXT_CAPS[i]) for i, v in ((17, answer),)),
        None if confidence is None else _float(confidence),
        *(None if v is None else text(v, TEXT_CAPS[i]) for i, v in ((19, digest), (20, prompt), (21, said))),
    )


def _plain(s: str) -> bool:
    """ASCII without NUL: stored as is by every database (the common case, checked in two C calls)."""
    return s.isascii() and "\x00" not in s


def _observed_ok(row: Row) -> bool:
    """Whether a shadowed row's observation columns are storable as they are."""
    conf = row[18]
    return (conf is None or (isinstance(conf, float) and -_BIG <= conf <= _BIG)) and all(
        v is None or (isinstance(v, str) and len(v) <= TEXT_CAPS[i] and "\x00" not in v and _utf8(v))
        for i, v in ((17, row[17]), (19, row[19]), (20, row[20]), (21, row[21]))
    )


def _utf8(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def problem(row: object) -> str | None:
    """Why ``row`` (read from a journal file) is not a row this library writes; None when it is one.

    Checks the width, each value's type, finite times, counts within their column, a known outcome, tags that are a
    JSON object of strings, and a cost that is a non-negative decimal whose pico-dollars are ``cost_pusd``: a
    crafted record could otherwise credit a key (a negative cost) or lock one out (an absurd one)."""
    if not isinstance(row, tuple) or len(row) != COLUMNS:
        return f"not a row of {COLUMNS} values"
    ts, rid, seq, tier, model, outcome, tin, tout, tcached, est, usd, pusd, lat, err, tags, attempt, finish = row[:BASE]
    if not all(v is None or isinstance(v, str) for v in (*row[BASE : BASE + 1], *row[BASE + 2 :])):
        return "an observation that is not text"
    if row[BASE + 1] is not None and not isinstance(row[BASE + 1], float):
        return "a confidence that is not a number"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and -_BIG <= v <= _BIG for v in (ts, lat)):
        return "time or latency not a finite number"
    if lat < 0:
        return "time or latency not a finite number"
    if not all(isinstance(v, str) and v for v in (rid, model, outcome)):
        return "request id, model or outcome missing"
    if outcome not in OUTCOMES:
        return f"unknown outcome {outcome[:32]!r}"
    ints = (seq, tier, tin, tout, tcached, attempt)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INT32 for v in ints) or est not in (0, 1):
        return "a count outside its column's range"
    if not all(v is None or isinstance(v, str) for v in (err, finish)) or not isinstance(tags, str):
        return "error, finish reason or tags not text"
    if usd is None and pusd is not None:
        return "cost_usd and cost_pusd disagree"
    if usd is not None:
        try:
            cost = Decimal(usd)
        except (InvalidOperation, TypeError):
            return "cost_usd not a decimal"
        if not cost.is_finite() or cost < 0 or cost > 10**6:
            return f"cost_usd {usd[:40]!r} out of range"
        if pusd is not None and (  # None: worked out from cost_usd when stored (clean), as the ledger's rows leave it
            not isinstance(pusd, int) or abs(int((cost * 10**12).to_integral_value()) - pusd) > 1
        ):
            return "cost_pusd is not cost_usd in pico-dollars"
    try:
        parsed = json.loads(tags)
    except ValueError:
        return "tags not JSON"
    if not isinstance(parsed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
        return "tags not a JSON object of strings"
    return None
