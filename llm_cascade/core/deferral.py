"""A learned deferral rule: a small logistic model of P(the tier's majority answer is right), fitted on recorded runs.

Unanimity, quorums and one model's confidence each look at one signal. Learned-deferral cascades (FrugalGPT's
scorer, rational cascade tuning) do better by combining them: *who* agreed with the majority, *how sure* each
supporter was, and *how sure* each dissenter was. :class:`Learned` does exactly that with three features per member,
in tier order::

    agree_j                  1 when member j gave the majority answer
    agree_j * conf_j         the supporter's confidence (unknown counts as 0, as everywhere)
    dissent_j * conf_j       confidence of a member that answered something else
    agree_j * surprise_j     surprise_j = -log(max(1 - conf_j, 1e-6)): separates 0.99 from 0.9999, where
    dissent_j * surprise_j   LLM answer probabilities crowd

``score = bias + sum(weight_k * feature_k)``, accumulated left to right, and the tier accepts when the score reaches
``logit(threshold)``: only + and * on floats, and ``surprise`` computed by the same Python function on both paths (the
simulator computes it once per recorded value, not per configuration), so the Router (one request, pure Python, a
few microseconds) and the simulator (numpy, every example at once) compute bit-identical scores and decisions.

:func:`fit` fits the weights by L2-regularised logistic regression (Newton's method in numpy, no extra dependency);
:mod:`llm_cascade.evals.calibrate` fits it on calibration folds and picks the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .agreement import Decision, Rule, RuleSpec, TierArrays, TierVotes
from .errors import ConfigError

if TYPE_CHECKING:
    from .agreement import BoolArray, FloatArray

FEATURES_PER_MEMBER = 5
#: A warm fit keeps its Hessian once a step is this small (a chord step: the same optimum, half the work per step).
CHORD = 1e-3


def surprise(conf: float) -> float:
    """``-log(1 - conf)``, capped at 1e-6 of doubt: how sure a member is where probabilities crowd near 1."""
    return -math.log(max(1.0 - conf, 1e-6))


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True, slots=True)
class Learned(Rule):
    """Accept when the fitted P(correct) of the majority answer is at least ``threshold`` (see the module doc)."""

    weights: tuple[float, ...]
    bias: float
    threshold: float
    needs_confidence = True

    def __post_init__(self) -> None:
        if not isinstance(self.weights, tuple) or not self.weights or not all(_finite(w) for w in self.weights):
            raise ConfigError("learned.weights", f"must be a non-empty list of finite numbers, got {self.weights!r}")
        if len(self.weights) % FEATURES_PER_MEMBER:
            raise ConfigError(
                "learned.weights", f"needs {FEATURES_PER_MEMBER} weights per member, got {len(self.weights)}"
            )
        if not _finite(self.bias):
            raise ConfigError("learned.bias", f"must be a finite number, got {self.bias!r}")
        if not _finite(self.threshold) or not 0.0 < self.threshold < 1.0:
            raise ConfigError("learned.threshold", f"must be a probability in (0, 1), got {self.threshold!r}")

    @property
    def size(self) -> int:
        """The number of members the weights were fitted for."""
        return len(self.weights) // FEATURES_PER_MEMBER

    @property
    def cut(self) -> float:
        """``logit(threshold)``: the score to reach (computed once, the same number on both paths)."""
        return math.log(self.threshold / (1.0 - self.threshold))

    def check(self, size: int) -> None:
        if size != self.size:
            raise ConfigError("rule", f"learned rule fitted for {self.size} member(s), the tier has {size}")

    def score(self, votes: TierVotes) -> float:
        """The logit of P(correct) for this tier's majority answer."""
        answer, _ = votes.majority()
        s = float(self.bias)
        w = self.weights
        for j, (a, c) in enumerate(zip(votes.answers, votes.confidences, strict=True)):
            conf = c or 0.0
            agree = 1.0 if a is not None and a == answer else 0.0
            dissent = 1.0 if a is not None and a != answer else 0.0
            u = surprise(conf)
            s = s + w[5 * j] * agree
            s = s + w[5 * j + 1] * (agree * conf)
            s = s + w[5 * j + 2] * (dissent * conf)
            s = s + w[5 * j + 3] * (agree * u)
            s = s + w[5 * j + 4] * (dissent * u)
        return s

    def decide(self, votes: TierVotes) -> Decision:
        answer, _ = votes.majority()
        if answer is None:
            return Decision(False, None, 0.0)
        s = self.score(votes)
        p = 1.0 / (1.0 + math.exp(-s)) if s > -700 else 0.0
        return Decision(s >= self.cut, answer, p)

    def accept(self, tier: TierArrays) -> BoolArray:
        if tier.size != self.size:
            raise ConfigError("rule", f"learned rule fitted for {self.size} member(s), the tier has {tier.size}")
        s = _scores(self.weights, self.bias, tier)
        out: BoolArray = tier.has_answer & (s >= self.cut)
        return out

    def spec(self) -> RuleSpec:
        return {"learned": {"weights": list(self.weights), "bias": self.bias, "threshold": self.threshold}}

    def describe(self) -> str:
        return f"learned(P>={self.threshold:.3g})"

    def with_threshold(self, threshold: float) -> Learned:
        return Learned(self.weights, self.bias, threshold)


def _scores(weights: tuple[float, ...] | list[float], bias: float, tier: TierArrays) -> FloatArray:
    """Vectorised :meth:`Learned.score`, with the same operations in the same order (bit-identical)."""
    import numpy as np

    agree = tier.agree.astype(np.float64)
    dissent = (tier.answered & ~tier.agree).astype(np.float64)
    conf, u = tier.conf, tier.surprise
    s = np.full(agree.shape[0], float(bias))
    for j in range(agree.shape[1]):
        s = s + weights[5 * j] * agree[:, j]
        s = s + weights[5 * j + 1] * (agree[:, j] * conf[:, j])
        s = s + weights[5 * j + 2] * (dissent[:, j] * conf[:, j])
        s = s + weights[5 * j + 3] * (agree[:, j] * u[:, j])
        s = s + weights[5 * j + 4] * (dissent[:, j] * u[:, j])
    return s


def features(tier: TierArrays) -> FloatArray:
    """The (n, 5 * members) feature matrix of a tier, in the weights' order."""
    import numpy as np

    agree = tier.agree.astype(np.float64)
    dissent = (tier.answered & ~tier.agree).astype(np.float64)
    members = agree.shape[1]
    out: FloatArray = np.empty((agree.shape[0], FEATURES_PER_MEMBER * members), order="F")  # what fit() reads
    for j in range(members):
        c, u, k = tier.conf[:, j], tier.surprise[:, j], FEATURES_PER_MEMBER * j
        np.copyto(out[:, k], agree[:, j])
        np.multiply(agree[:, j], c, out=out[:, k + 1])
        np.multiply(dissent[:, j], c, out=out[:, k + 2])
        np.multiply(agree[:, j], u, out=out[:, k + 3])
        np.multiply(dissent[:, j], u, out=out[:, k + 4])
    return out


def fit(
    x: FloatArray,
    y: BoolArray,
    *,
    l2: float = 1.0,
    iterations: int = 25,
    start: tuple[tuple[float, ...], float] | None = None,
    rows: BoolArray | None = None,
    hessian: FloatArray | None = None,
) -> tuple[tuple[float, ...], float]:
    """L2-regularised logistic regression by Newton's method: (weights, bias). The bias is not penalised.

    Small calibration sets (a few hundred examples) and few features: Newton converges in a handful of steps, and
    the penalty keeps weights finite when the classes separate (a member that is always right when it agrees).

    ``start``: weights to start from (a fit on most of the same rows, e.g. another calibration fold's): Newton then
    needs two or three steps instead of eight to eleven (the same optimum to the 1e-8 step tolerance, not the same
    last bits as a cold fit). The products run on a column-major copy of ``x`` (2x faster than row-major at 100k
    rows; its sums differ from row-major ones in the last bits only).

    A warm fit reuses the last Hessian once the steps are under :data:`CHORD` (near the optimum it barely changes:
    the steps still shrink by about a factor ``CHORD`` each, and only the gradient, which sets the optimum, is new).

    ``hessian``: the data part of a Hessian *per row* near this fit's optimum (from :func:`fit_with_hessian` on most
    of the same rows: another calibration fold's fit), over every column of ``x`` and the bias. Every step then uses
    it (scaled to the rows fitted, plus the penalty) with the exact gradient: quasi-Newton steps of two products each
    instead of the rows x d x d of a Hessian. The optimum is where the exact gradient vanishes, so it is the same
    one; the steps shrink by about the Hessian's relative error each (measured: 8 steps from a fold's weights to all
    rows' at 100k rows, against 10-11 full Newton steps cold), and the fit stops at :data:`QUASI_TOL`, tighter than
    the 1e-8 of Newton steps. Should the steps stop shrinking, the fit goes on with exact Newton steps.

    ``rows``: fit on these rows of ``x`` only (gathered column by column, without a row-major copy). Feature columns
    that are zero on every row (a first member never dissents) are left out of the products: their weight is 0
    either way (zero gradient, a penalty-only Hessian row), and the other weights are the same solution.
    """
    w, b, _ = fit_with_hessian(x, y, l2=l2, iterations=iterations, start=start, rows=rows, hessian=hessian)
    return w, b


#: Step size at which a fit with a given Hessian (see :func:`fit`) stops.
QUASI_TOL = 1e-10


def fit_with_hessian(
    x: FloatArray,
    y: BoolArray,
    *,
    l2: float = 1.0,
    iterations: int = 25,
    start: tuple[tuple[float, ...], float] | None = None,
    rows: BoolArray | None = None,
    hessian: FloatArray | None = None,
) -> tuple[tuple[float, ...], float, FloatArray | None]:
    """:func:`fit`, and the data part of its last exact Hessian per row, over every column and the bias (zero rows
    and columns for the features left out): what later fits on most of the same rows may pass as ``hessian``. None
    when no exact Hessian was computed (a fit that was given one and never needed its own)."""
    import numpy as np

    full = x.shape[1]
    index = None if rows is None else np.flatnonzero(rows)
    if index is not None:
        t = y[index].astype(np.float64)
        n = t.shape[0]
    else:
        t = y.astype(np.float64)
        n = x.shape[0]
    if n == 0:  # nothing answered in this training part: a rule that never accepts
        return (0.0,) * full, -30.0, None
    # the design matrix with its column of ones, column-major: its products run 2x faster than row-major ones
    a = np.empty((n, full + 1), order="F")
    for j in range(full):
        if index is not None:
            np.take(x[:, j], index, out=a[:, j])  # the rows gathered by index: 3x faster than a boolean mask
        else:
            a[:, j] = x[:, j]
    a[:, full] = 1.0
    live = np.flatnonzero(np.concatenate([a[:, :full].any(axis=0), [True]]))
    if live.size < full + 1:  # drop the all-zero columns (weight 0; the rest solve the same system)
        a = np.asfortranarray(a[:, live])
    d = live.size - 1
    at = a.T
    beta = np.zeros(d + 1)
    if start is None:
        prior = np.clip(t.mean() if n else 0.5, 1e-3, 1 - 1e-3)
        beta[-1] = math.log(prior / (1 - prior))
    else:
        beta[:] = np.append(np.asarray(start[0], dtype=np.float64), start[1])[live]
    penalty = np.full(d + 1, l2)
    penalty[-1] = 1e-6
    ridge = np.diag(penalty)
    # buffers reused by every step (the same operations as the plain expressions, so the same bits): at 100k rows a
    # fresh n x d temporary per step was paged in from the OS each time
    z = np.empty(n)
    p = np.empty(n)
    w = np.empty(n)
    weighted: FloatArray | None = None
    hess: FloatArray | None = None
    data: FloatArray | None = None
    last = math.inf
    if hessian is not None:
        beta, done = _quasi(a, at, t, beta, penalty, np.linalg.inv(n * hessian[np.ix_(live, live)] + ridge), z, p)
        if done:
            iterations = 0
    for _ in range(iterations):
        _probabilities(a, beta, z, p)
        np.subtract(p, t, out=z)
        grad = at @ z + penalty * beta
        if hess is None or start is None or last > CHORD:
            np.subtract(1, p, out=w)
            np.multiply(p, w, out=w)  # p * (1 - p)
            if weighted is None:
                weighted = np.empty((d + 1, n))
            np.multiply(at, w, out=weighted)
            data = weighted @ a
            hess = data + ridge
        assert hess is not None
        step = np.linalg.solve(hess, grad)
        beta = beta - step
        last = float(np.abs(step).max())
        if last < 1e-8:
            break
    weights = np.zeros(full + 1)
    weights[live] = beta
    per_row: FloatArray | None = None
    if data is not None:
        per_row = np.zeros((full + 1, full + 1))
        per_row[np.ix_(live, live)] = data / n
    return tuple(float(b) for b in weights[:-1]), float(weights[-1]), per_row


#: Quasi-Newton steps (see :func:`fit`'s ``hessian``) tried before exact Newton steps take over from the start.
QUASI_STEPS = 30


def _probabilities(a: FloatArray, beta: FloatArray, z: FloatArray, p: FloatArray) -> None:
    """``p = 1 / (1 + exp(-clip(a @ beta)))`` into the buffers given (``z`` is overwritten)."""
    import numpy as np

    np.matmul(a, beta, out=z)
    np.clip(z, -30, 30, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    np.add(1.0, z, out=z)
    np.divide(1.0, z, out=p)


def _quasi(
    a: FloatArray,
    at: FloatArray,
    t: FloatArray,
    beta: FloatArray,
    penalty: FloatArray,
    inverse: FloatArray,
    z: FloatArray,
    p: FloatArray,
) -> tuple[FloatArray, bool]:
    """Steps ``inverse @ gradient`` (exact gradient, fixed Hessian) from ``beta``: (the optimum, True) once a step is
    under :data:`QUASI_TOL`; else (``beta`` as given, False) when the steps stop halving or
    :data:`QUASI_STEPS` pass. A step that small means a gradient that small (the Hessian given is positive
    definite), and the objective is strictly convex: it is the optimum, whatever the Hessian was."""
    import numpy as np

    current, last = beta, math.inf
    for _ in range(QUASI_STEPS):
        _probabilities(a, current, z, p)
        np.subtract(p, t, out=z)
        step = inverse @ (at @ z + penalty * current)
        size = float(np.abs(step).max())
        if size < QUASI_TOL or (size < 1e-8 and size > 0.5 * last):  # converged, or stalled at the rounding floor
            return current - step, True
        if size > 0.5 * last:
            break
        current, last = current - step, size
    return beta, False


def parse(spec: Any, field: str) -> Learned:
    """The rule from its config table ``{weights = [...], bias = ..., threshold = ...}``."""
    if not isinstance(spec, dict) or set(spec) != {"weights", "bias", "threshold"}:
        raise ConfigError(field, "a learned rule is a table with exactly: weights, bias, threshold")
    weights = spec["weights"]
    if not isinstance(weights, list):
        raise ConfigError(f"{field}.weights", f"must be a list of numbers, got {weights!r}")
    try:
        return Learned(tuple(weights), spec["bias"], spec["threshold"])
    except ConfigError as exc:
        raise ConfigError(f"{field}.{exc.field.removeprefix('learned.')}", exc.problem) from None
