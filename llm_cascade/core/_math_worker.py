"""The child process behind :class:`~llm_cascade.core.normalize_math.Math`: LaTeX/expression text -> a canonical key.

It runs in its own process (``python -m llm_cascade.core._math_worker``, one JSON line in, one out) because a symbolic
parse or simplification can take unbounded time on a pathological answer, and only a process can be stopped from
outside: the parent waits a bounded time for each answer and kills this process when it overruns (math-verify's own
timeout uses SIGALRM, which works only on the main thread and would take over the application's alarm handler).
math-verify and sympy load here, never in the parent.
"""

from __future__ import annotations

from typing import Any


def canonical(span: str) -> str | None:
    """The canonical key of one answer span, or None when it is not mathematics math-verify can read."""
    import sympy
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    found = parse(
        f"${span}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None
    )
    if not found:
        return None
    expr: Any = found[0]
    if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
        expr = expr.rhs  # "x = 5" answers with 5
    if isinstance(expr, sympy.MatrixBase):
        return str(expr.applyfunc(lambda e: sympy.nsimplify(sympy.simplify(e), rational=True)).tolist())
    if not isinstance(expr, sympy.Basic):
        return None
    if expr.has(sympy.Float):
        expr = sympy.nsimplify(expr, rational=True)  # 0.5 and 1/2 are one answer
    if isinstance(expr, sympy.Set):
        return str(sympy.simplify(expr))
    return str(sympy.expand(sympy.simplify(expr)))


def main() -> None:
    """Answer one JSON-encoded span per stdin line with one JSON line (the key, or null); "ready" first."""
    import json
    import logging
    import sys

    logging.disable(logging.WARNING)  # math-verify warns on stderr about its disabled signal timeout
    canonical("1")  # load sympy and the LaTeX grammar before saying ready
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        try:
            key = canonical(json.loads(line))
        except Exception:  # an unreadable answer is no answer
            key = None
        print(json.dumps(key), flush=True)


if __name__ == "__main__":
    main()
