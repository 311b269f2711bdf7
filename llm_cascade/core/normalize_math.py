"""``Math``: answers compared by mathematical equivalence, for MATH-style LaTeX and expression answers.

Two models agree when their final answers are the same mathematics: ``\\frac{1}{2}``, ``0.5`` and ``1/2`` are one
answer, ``\\frac{1}{4}`` and ``\\frac{3}{4}`` are two. The Router compares answers by equality, so each answer is
turned into a canonical key (``"1/2"``, ``"sqrt(2)/2"``, ``"{-1, 2}"``, ``"Interval.Lopen(2, 5)"``): exact numbers
on a fast path in this process, everything else by math-verify and sympy in a child process that gets ``timeout``
seconds per answer and is killed when it overruns, so no pathological answer stalls the event loop for longer.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import os
import queue
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ._answer import boxed, cut_continuation, json_answer, statements
from .errors import ConfigError, MissingDependencyError

_EXACT = re.compile(
    r"(?P<sign>-?)(?:(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<dec>\d+))?"
    r"|\\[dt]?frac\s*\{\s*(?P<fn>\d+)\s*\}\s*\{\s*(?P<fd>\d+)\s*\}|(?P<sn>\d+)\s*/\s*(?P<sd>\d+))"
)
_BASE_N = re.compile(r"-?[0-9A-Za-z]+_\{?\d+\}?")
_DELIMITERS = re.compile(r"^(?:\$\$?|\\\(|\\\[)\s*|\s*(?:\$\$?|\\\)|\\\])$")


def _exact(span: str) -> str | None:
    """The key of a plain integer, decimal or fraction, without sympy: "0.50" -> "1/2", "\\frac{6}{3}" -> "2"."""
    m = _EXACT.fullmatch(span)
    if not m:
        return None
    if m["fn"] is not None or m["sn"] is not None:
        num, den = (int(m["fn"]), int(m["fd"])) if m["fn"] is not None else (int(m["sn"]), int(m["sd"]))
        if den == 0:
            return None
        value = Fraction(num, den)
    else:
        value = Fraction(f"{m['int'].replace(',', '')}.{m['dec'] or 0}")
    value = -value if m["sign"] else value
    return str(value)


def answer_span(text: str, max_chars: int) -> str | None:
    """The text of the final answer: the JSON ``answer`` field, else the last ``\\boxed{}``, ``####`` or "the answer
    is" statement, else the whole reply when it is a short one-liner."""
    span: str | None = json_answer(text)
    if span is None:
        found = boxed(text) + statements(text) + [(m.start(), m.group(1)) for m in re.finditer(r"####\s*(.+)", text)]
        if found:
            found.sort(key=lambda f: f[0])
            cut = len(cut_continuation(text, found[0][0]))
            span = max((f for f in found if f[0] < cut), key=lambda f: f[0])[1]
            inner = boxed(span)
            span = inner[-1][1] if inner else span
        elif "\n" not in text.strip() and len(text) <= max_chars:
            span = text
    if span is None:
        return None
    span = _DELIMITERS.sub("", span.strip().rstrip(".").strip())
    span = re.sub(r"\s*\\?%$", "", span)  # "18\%" answers "what percent": the same answer as 18
    return span if span and len(span) <= max_chars else None


class _Worker:
    """One child Python answering ``span -> key`` over pipes; restarted after a timeout or a crash.

    A plain subprocess rather than multiprocessing: spawn would re-run the application's main script in the child.
    A reader thread turns the child's lines into a queue, so the parent can wait with a timeout on every platform.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ready = False

    def _spawn(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "llm_cascade.core._math_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc, lines), daemon=True, name="llm-cascade-math").start()
        self._proc, self._lines, self._ready = proc, lines, False

    def prestart(self) -> None:
        """Start the child now, without waiting, so it has loaded sympy by the time the first answer arrives."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self.stop()
                self._spawn()

    def _started(self, startup_timeout: float) -> subprocess.Popen[str] | None:
        """The running child, started (and waited for) when there is none."""
        if self._proc is None or self._proc.poll() is not None:
            self.stop()
            self._spawn()
        if not self._ready:
            self._ready = self._read(startup_timeout) == "ready"
            if not self._ready:
                self.stop()
                return None
        return self._proc

    def _read(self, timeout: float) -> object:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return _TIMED_OUT
        return _TIMED_OUT if line is None else json.loads(line)

    def stop(self) -> None:
        """Kill the child (it is started again on the next answer that needs it)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()
        self._proc = None

    def key(self, span: str, timeout: float, startup_timeout: float = 20.0) -> str | None:
        with self._lock:
            proc = self._started(startup_timeout)
            if proc is None or proc.stdin is None:
                return None
            try:
                proc.stdin.write(json.dumps(span) + "\n")
                proc.stdin.flush()
            except OSError:
                self.stop()
                return None
            result = self._read(timeout)
            if result is _TIMED_OUT:
                self.stop()  # overran or died: a fresh process, loading while we go on, serves the next answer
                self._spawn()
                return None
            return result if isinstance(result, str) else None


_TIMED_OUT = object()


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


_WORKER = _Worker()


@functools.lru_cache(maxsize=4096)
def _math(text: str, timeout: float, max_chars: int) -> str | None:
    span = answer_span(text, max_chars)
    if span is None:
        return None
    key = _exact(span)
    if key is not None:
        return key
    if _BASE_N.fullmatch(span):  # 221_3 is a base-3 numeral, not 221: the question asked for that base
        return span.replace("{", "").replace("}", "")
    if importlib.util.find_spec("math_verify") is None:
        raise MissingDependencyError("math-verify", "math")
    return _WORKER.key(span, timeout)


@dataclass(frozen=True, slots=True)
class Math:
    """A final answer compared as mathematics: ``\\frac{1}{2}``, ``0.5`` and ``1/2`` give the same key ``"1/2"``.

    The answer is the last ``\\boxed{}`` (or JSON ``answer`` field, "####" line, "the answer is" statement), or the
    whole reply when it is a short one-liner. Integers, decimals and fractions are read exactly here; any other
    expression is parsed by math-verify and simplified by sympy in a child process (``pip install
    'llm-cascade[math]'``), at most ``timeout`` seconds per answer, and answers over ``max_chars`` are refused: an
    answer that cannot be read in time is None, which agrees with nothing. Keys are cached per text. The child
    process starts (in the background) when the first ``Math`` is made and serves every instance.
    """

    timeout: float = 1.0
    max_chars: int = 300

    def __post_init__(self) -> None:
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float) or not self.timeout > 0:
            raise ConfigError("Math.timeout", f"must be a positive number of seconds, got {self.timeout!r}")
        if isinstance(self.max_chars, bool) or not isinstance(self.max_chars, int) or self.max_chars < 1:
            raise ConfigError("Math.max_chars", f"must be a positive integer, got {self.max_chars!r}")
        if importlib.util.find_spec("math_verify") is not None:
            _WORKER.prestart()

    def __call__(self, text: str) -> str | None:
        return _math(text, float(self.timeout), self.max_chars)

    async def acall(self, text: str) -> str | None:
        """:meth:`__call__` for the event loop (the router uses it): an answer read in this process (an integer, a
        decimal, a fraction) is read here; one that needs the sympy child, which may take up to ``timeout``, is read
        on a worker thread, so other requests go on meanwhile."""
        span = answer_span(text, self.max_chars)
        if span is None or _exact(span) is not None or _BASE_N.fullmatch(span):
            return self(text)
        return await asyncio.to_thread(self, text)
