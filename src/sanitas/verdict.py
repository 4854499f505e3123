"""One way to turn a measured quantity into a verdict: by its confidence interval, never a point.

A claim compares a measure with a threshold or a reference measure. The comparison is made on the
bootstrap distribution of ``measure - reference`` (paired: both come from the same resampled
images, draws and model seeds, see :mod:`sanitas.utils.bootstrap`):

* **holds** when the whole 95% interval satisfies the expectation,
* **does not hold** when the whole interval violates it,
* **inconclusive** when the interval straddles the threshold (more images or draws may decide),
* **not run** when there is nothing to measure (say why).

So a claim whose interval straddles its threshold is never "holds". The same function judges the
papers' claims (``sanitas reproduce``), the per-method verdicts of every check
(``result.verdicts()``), the command line and the report.
"""

from __future__ import annotations

import math

from sanitas.errors import ConfigError
from sanitas.utils.bootstrap import Dist

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "does not hold", "inconclusive", "not run"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_RUN)
LEVEL = 0.95


def judge(value: Dist, op: str, reference: Dist | float = 0.0, tol: float | None = None,
          level: float = LEVEL) -> tuple[str, Dist]:
    """``(verdict, difference)`` for ``value op reference`` (``op``: ``<``, ``<=``, ``>``, ``>=``,
    ``within`` with ``tol``), judged on the interval of ``value - reference``."""
    diff = value - reference
    if math.isnan(diff.estimate):
        return NOT_RUN, diff
    lo, hi = diff.ci(level)
    if math.isnan(lo) or math.isnan(hi):
        return NOT_RUN, diff
    if op in (">", ">="):
        ok = lo > 0 if op == ">" else lo >= 0
        bad = hi <= 0 if op == ">" else hi < 0
    elif op in ("<", "<="):
        ok = hi < 0 if op == "<" else hi <= 0
        bad = lo >= 0 if op == "<" else lo > 0
    elif op == "within":
        if tol is None or tol < 0:
            raise ConfigError(f"'within' needs a tolerance >= 0, got {tol!r}")
        ok = -tol <= lo and hi <= tol
        bad = lo > tol or hi < -tol
    else:
        raise ConfigError(f"unknown comparison {op!r}: use <, <=, >, >= or within")
    return (HOLDS if ok else FAILS if bad else INCONCLUSIVE), diff


def ci_text(d: Dist, level: float = LEVEL, digits: int = 3) -> str:
    lo, hi = d.ci(level)
    if not d.samples.size:
        return f"{d.estimate:.{digits}f}"
    return f"{d.estimate:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
