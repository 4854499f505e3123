"""Bootstrap distributions of means over crossed and nested factors (images, randomization draws,
model seeds), shared between measures so that comparisons are paired.

A result table has one row per image x draw x model seed (x method x stage x metric). The images
are the same in every draw and every seed (crossed factors); the draws of a randomized stage are
independent random weights; model seeds are independently trained models. A confidence interval that
resamples only images treats one random draw as if it were the only possible one, and a verdict
could then depend on one draw (issue: "one random draw decides others"). So every factor present is
resampled, each with its own multinomial weights, and an observation's weight is the product of
the weights of its levels:

    mean_b = sum_o w_b(image_o) w_b(draw_o) w_b(seed_o) v_o / sum_o (same weights over finite v_o)

:class:`Resampler` draws the weights once per factor and level set, so two measures on the same
images (a method and its ceiling, two methods) are resampled together and their difference has the
right, paired interval. NaN values (constant maps) and rows marked excluded take no part; their
number is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: factors resampled when present as columns of a table, outermost first
FACTORS = ("model_seed", "draw", "image")


class Resampler:
    """Bootstrap weights per factor, drawn once per (factor, levels) and reused by every measure."""

    def __init__(self, n_boot: int = 2000, seed: int = 0):
        self.n_boot = int(n_boot)
        self._rng = np.random.default_rng(int(seed))
        self._weights: dict[tuple, np.ndarray] = {}

    def weights(self, factor: str, levels: tuple) -> np.ndarray:
        """``(n_boot, len(levels))`` multinomial counts (each row sums to the number of levels)."""
        key = (factor, levels)
        if key not in self._weights:
            k = len(levels)
            self._weights[key] = self._rng.multinomial(k, np.full(k, 1.0 / k), size=self.n_boot).astype(np.float64)
        return self._weights[key]


@dataclass
class Dist:
    """A statistic and its bootstrap distribution (``samples`` may be empty: a number without CI)."""

    estimate: float
    samples: np.ndarray = field(default_factory=lambda: np.empty(0))
    n: int = 0
    excluded: int = 0

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        if not self.samples.size:
            return self.estimate, self.estimate
        s = self.samples[np.isfinite(self.samples)]
        if not s.size:
            return math.nan, math.nan
        alpha = (1 - level) / 2
        lo, hi = np.quantile(s, [alpha, 1 - alpha])
        return float(lo), float(hi)

    # arithmetic on paired distributions (same resampled weights) or numbers
    def _combine(self, other, fn) -> "Dist":
        if not isinstance(other, Dist):
            other = Dist(float(other))
        a, b = self.samples, other.samples
        if a.size and b.size:
            samples = fn(a, b)
        elif a.size:
            samples = fn(a, np.full_like(a, other.estimate))
        elif b.size:
            samples = fn(np.full_like(b, self.estimate), b)
        else:
            samples = np.empty(0)
        return Dist(float(fn(np.float64(self.estimate), np.float64(other.estimate))), samples,
                    max(self.n, other.n), self.excluded + other.excluded)

    def __sub__(self, other):
        return self._combine(other, np.subtract)

    def __truediv__(self, other):
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._combine(other, np.divide)

    def __abs__(self):
        return Dist(abs(self.estimate), np.abs(self.samples), self.n, self.excluded)

    @classmethod
    def reduce(cls, dists: list["Dist"], how: str) -> "Dist":
        """min / max / mean across several distributions (e.g. over stages), sample by sample."""
        fn = {"mean": np.mean, "min": np.min, "max": np.max}[how]
        est = float(fn([d.estimate for d in dists]))
        if all(d.samples.size for d in dists):
            samples = fn(np.stack([d.samples for d in dists]), axis=0)
        else:
            samples = np.empty(0)
        return cls(est, samples, sum(d.n for d in dists), sum(d.excluded for d in dists))


def table_mean(rows: pd.DataFrame, resampler: Resampler | None, value: str = "value",
               exclude: pd.Series | None = None) -> Dist:
    """The mean of ``rows[value]`` and its bootstrap distribution over the factors present.

    ``exclude``: a boolean mask of rows left out (degenerate maps); NaN values are left out too.
    Both are counted in ``excluded``.
    """
    v = rows[value].to_numpy(dtype=np.float64)
    drop = np.isnan(v)
    if exclude is not None:
        drop |= exclude.to_numpy(dtype=bool)
    n = int((~drop).sum())
    if n == 0:
        return Dist(math.nan, np.empty(0), 0, int(drop.sum()))
    keep = ~drop
    estimate = float(v[keep].mean())
    if resampler is None:
        return Dist(estimate, np.empty(0), n, int(drop.sum()))
    num = np.zeros(resampler.n_boot)
    weight = np.ones((resampler.n_boot, len(v)))
    for factor in FACTORS:
        if factor not in rows.columns:
            continue
        column = rows[factor]
        if column.isna().all():  # the factor is another kind of row's (a floor row has no model seed)
            continue
        labels = column.astype(object).where(column.notna(), "-").to_numpy()
        levels = tuple(sorted(set(labels.tolist()), key=str))
        if len(levels) < 2:
            continue
        pos = {lv: i for i, lv in enumerate(levels)}
        w = resampler.weights(factor, levels)
        weight *= w[:, [pos[lv] for lv in labels.tolist()]]
    weight[:, drop] = 0.0
    num = weight @ np.where(drop, 0.0, v)
    den = weight.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = num / den
    return Dist(estimate, samples, n, int(drop.sum()))
