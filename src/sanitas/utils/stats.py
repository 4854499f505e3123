"""NaN-aware summaries of per-image scores: mean, percentile-bootstrap confidence interval, counts.

A similarity metric returns NaN for an image it cannot score (a constant map has no ranks and no
correlation). Those NaNs are never averaged in: :func:`summarize` leaves them out of the mean and
the interval and reports how many there were, so a reader sees "mean 0.41 over 60 images, 4 NaN"
rather than a silently biased 0.41.

Values may be one-dimensional (one score per image) or two-dimensional ``(units, draws)``, e.g.
one row per image and one column per random mask in a calibration. In the second case the
bootstrap resamples whole rows (a cluster bootstrap), because draws on the same image are not
independent of each other; the mean is still the mean of all finite scores.

Randomness comes from a private :class:`numpy.random.Generator` seeded by ``seed``; the global
numpy and torch random states are never read or changed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sanitas.errors import ConfigError, InputError

__all__ = ["bootstrap_ci", "summarize"]

# Upper bound on the number of resampled indices held in memory at once.
_CHUNK_ELEMENTS = 4_000_000


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, on any device
        values = values.detach().to("cpu").double().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"values must be numbers (a list, numpy array or tensor); got {type(values).__name__}") \
            from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim > 2:
        raise InputError(f"values must be 1-D (one score per image) or 2-D (images x draws); got shape {arr.shape}")
    if np.isinf(arr).any():
        raise InputError("values contain +-inf; a similarity score is finite or NaN (not scorable), so an "
                         "infinite value points to a bug upstream")
    return arr


def _check_options(n_boot: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer; got {n_boot!r}")
    if not isinstance(level, (float, int)) or isinstance(level, bool) or not 0.0 < float(level) < 1.0:
        raise ConfigError(f"level must be a probability strictly between 0 and 1 (e.g. 0.95); got {level!r}")


def _sums_counts(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit sums and counts of finite values; units with no finite value are dropped."""
    finite = ~np.isnan(arr)
    if arr.ndim == 1:
        return arr[finite], np.ones(int(finite.sum()))
    sums = np.where(finite, arr, 0.0).sum(axis=1)
    counts = finite.sum(axis=1).astype(np.float64)
    keep = counts > 0
    return sums[keep], counts[keep]


def _bootstrap(sums: np.ndarray, counts: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    n = sums.shape[0]
    if n == 0:
        return math.nan, math.nan
    if n == 1:
        v = float(sums[0] / counts[0])
        return v, v
    rng = np.random.default_rng(int(seed))
    rows = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1.0 - float(level)) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(values: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean, ignoring NaN.

    ``values``: 1-D scores, or 2-D ``(units, draws)`` scores resampled by whole rows. Returns
    ``(low, high)``; ``(nan, nan)`` when no value is finite, ``(v, v)`` for a single unit.
    Seeded by ``seed`` with a private generator, so the same call gives the same interval.
    """
    _check_options(n_boot, level)
    sums, counts = _sums_counts(_as_array(values))
    return _bootstrap(sums, counts, int(n_boot), float(level), seed)


def summarize(values: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float | int]:
    """``dict(mean, ci_low, ci_high, n, nan_count)`` of scores, NaN left out and counted.

    ``n`` is the number of finite scores the mean is taken over; ``nan_count`` the number of NaN
    scores (images that could not be scored, e.g. constant maps). The interval is
    :func:`bootstrap_ci` with the same arguments. Never warns, even when every value is NaN.
    """
    _check_options(n_boot, level)
    arr = _as_array(values)
    nan_count = int(np.isnan(arr).sum())
    n = int(arr.size - nan_count)
    mean = float(np.where(np.isnan(arr), 0.0, arr).sum() / n) if n else math.nan
    sums, counts = _sums_counts(arr)
    lo, hi = _bootstrap(sums, counts, int(n_boot), float(level), seed)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n, "nan_count": nan_count}
