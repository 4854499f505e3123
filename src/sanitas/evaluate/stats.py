"""Paired statistics for per-image scores: which saliency method is better, and by how much.

grabska2020 advises pairwise tests because perturbation metrics vary widely from image to image
(section 4): methods are compared on the *same* images with the Wilcoxon signed-rank test.

>>> table = pairwise_wilcoxon(df, metric="delta_e_minus")            # doctest: +SKIP

Input: a tidy DataFrame such as :func:`sanitas.evaluate.perturbation_scores` returns, with a
``method`` column, an ``image`` column (the pairing key), a ``value`` column, and grouping
columns (``metric`` and any others, e.g. ``variant``, ``layer``) inside which methods are compared.

For each group and each pair of methods (a, b) the differences ``d = a - b`` are taken over the
images where both have a finite value, and the table reports

* ``n`` (pairs used), ``n_nonzero`` (pairs with ``d != 0``);
* ``statistic``, ``p_value``: ``scipy.stats.wilcoxon(d, zero_method=..., alternative=..., method=...)``
  exactly as scipy returns them (if every ``d`` is 0: statistic 0, p = 1);
* ``p_adjusted``: Holm's step-down correction (``correction="holm"``) within each group
  (``family="group"``, default) or across the whole table (``family="all"``); absent with
  ``correction=None``;
* ``rank_biserial``: the matched-pairs rank-biserial correlation (Kerby 2014),
  ``(R+ - R-) / (R+ + R-)``, with ``R+`` (``R-``) the sum of the ranks of ``|d|`` over positive
  (negative) differences, ranked as the chosen ``zero_method`` ranks them ("wilcox": zeros dropped
  before ranking; "pratt": zeros ranked, then left out of both sums; "zsplit": zeros' ranks split
  half to each sum). In [-1, 1]; positive when a tends to exceed b; 0 when all ``d`` are 0;
* ``median_difference`` = median(d), ``mean_difference`` = mean(d);
* ``favours``: the better method by the sign of ``median_difference`` and
  :data:`sanitas.evaluate.HIGHER_IS_BETTER` for the metric (empty when unknown or tied).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from sanitas.errors import ConfigError, InputError

__all__ = ["pairwise_wilcoxon", "wilcoxon_pair", "rank_biserial", "holm", "summarize"]

_ZERO_METHODS = ("wilcox", "pratt", "zsplit")


def holm(p_values) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values; NaNs are kept and not counted in the family.

    With the m finite p-values sorted ascending, ``p_adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def rank_biserial(d, zero_method: str = "wilcox") -> float:
    """Matched-pairs rank-biserial correlation of the differences ``d`` (see module docstring)."""
    if zero_method not in _ZERO_METHODS:
        raise ConfigError(f"unknown zero_method {zero_method!r}: use one of {_ZERO_METHODS}")
    d = np.asarray(d, dtype=float)
    if zero_method == "wilcox":
        d = d[d != 0]
    if d.size == 0 or not np.any(d != 0):
        return 0.0
    ranks = sps.rankdata(np.abs(d))
    r_plus = ranks[d > 0].sum()
    r_minus = ranks[d < 0].sum()
    if zero_method == "zsplit":
        half_zero = ranks[d == 0].sum() / 2
        r_plus, r_minus = r_plus + half_zero, r_minus + half_zero
    return float((r_plus - r_minus) / (r_plus + r_minus))


def wilcoxon_pair(a, b, *, alternative: str = "two-sided", zero_method: str = "wilcox",
                  test_method: str = "auto") -> dict:
    """Wilcoxon signed-rank test of paired samples ``a``, ``b`` with effect sizes (one table row).

    Pairs where either value is NaN or infinite are dropped.
    """
    if zero_method not in _ZERO_METHODS:
        raise ConfigError(f"unknown zero_method {zero_method!r}: use one of {_ZERO_METHODS}")
    if alternative not in ("two-sided", "greater", "less"):
        raise ConfigError(f"unknown alternative {alternative!r}: use 'two-sided', 'greater' or 'less'")
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"paired samples must be 1-D and of equal length, got shapes {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    row = {"n": int(d.size), "n_nonzero": int(np.count_nonzero(d)), "statistic": np.nan, "p_value": np.nan,
           "rank_biserial": np.nan, "median_difference": np.nan, "mean_difference": np.nan}
    if d.size == 0:
        return row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        res = sps.wilcoxon(d, zero_method=zero_method, alternative=alternative, method=test_method)
    row.update(statistic=float(res.statistic), p_value=float(res.pvalue),
               rank_biserial=rank_biserial(d, zero_method), median_difference=float(np.median(d)),
               mean_difference=float(np.mean(d)))
    return row


def _higher_is_better(group_key: dict) -> bool | None:
    from sanitas.evaluate.perturbation import HIGHER_IS_BETTER

    metric = group_key.get("metric")
    return HIGHER_IS_BETTER.get(metric) if isinstance(metric, str) else None


def _check_frame(df, method_col, pair_col, value) -> None:
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"expected a pandas DataFrame of per-image scores, got {type(df).__name__}")
    missing = [c for c in (method_col, pair_col, value) if c not in df.columns]
    if missing:
        hint = (" (perturbation_scores adds a 'method' column only when maps are given as a dict "
                "{method: maps})") if method_col in missing else ""
        raise InputError(f"the scores table lacks column(s) {missing}; it has {list(df.columns)}{hint}")


def pairwise_wilcoxon(df: pd.DataFrame, metric: str | Sequence[str] | None = None, *,
                      methods: Sequence[str] | None = None, reference: str | None = None,
                      by: Sequence[str] | None = None, method_col: str = "method", pair_col: str = "image",
                      value: str = "value", alternative: str = "two-sided", zero_method: str = "wilcox",
                      test_method: str = "auto", correction: str | None = "holm",
                      family: str = "group") -> pd.DataFrame:
    """Wilcoxon signed-rank tests between methods, paired per image, in a tidy table.

    ``metric``: keep only these metrics (default all). ``methods``: which methods and in what
    order (default: order of appearance); every pair (a, b) with a before b is tested, or, with
    ``reference``, every other method a against ``b = reference``. ``by``: the grouping columns
    (default: every column but method, pair and value columns). Differences are ``a - b``.
    Columns are described in the module docstring.
    """
    _check_frame(df, method_col, pair_col, value)
    if correction not in (None, "holm"):
        raise ConfigError(f"unknown correction {correction!r}: use 'holm' or None")
    if family not in ("group", "all"):
        raise ConfigError(f"unknown family {family!r}: use 'group' (per metric/group) or 'all'")
    data = df
    if metric is not None:
        wanted = [metric] if isinstance(metric, str) else list(metric)
        if "metric" not in df.columns:
            raise InputError("metric= given but the table has no 'metric' column")
        unknown = sorted(set(wanted) - set(df["metric"].unique()))
        if unknown:
            raise InputError(f"metric(s) {unknown} not in the table; it has {sorted(df['metric'].unique())}")
        data = df[df["metric"].isin(wanted)]
    present = list(dict.fromkeys(data[method_col]))
    if methods is None:
        methods = present
    else:
        methods = list(methods)
        unknown = [m for m in methods if m not in present]
        if unknown:
            raise InputError(f"method(s) {unknown} not in the table; it has {present}")
    if reference is not None:
        if reference not in present:
            raise InputError(f"reference method {reference!r} not in the table; it has {present}")
        pairs = [(m, reference) for m in methods if m != reference]
    else:
        pairs = list(itertools.combinations(methods, 2))
    if not pairs:
        raise InputError(f"need at least two methods to compare, got {methods}")
    if by is None:
        by = [c for c in data.columns if c not in (method_col, pair_col, value)]
    else:
        by = list(by)
        missing = [c for c in by if c not in data.columns]
        if missing:
            raise InputError(f"grouping column(s) {missing} not in the table")

    rows = []
    groups = data.groupby(by, sort=False, dropna=False) if by else [((), data)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        gkey = dict(zip(by, key))
        dup = g.duplicated([method_col, pair_col])
        if dup.any():
            r = g[dup].iloc[0]
            raise InputError(f"more than one value for method {r[method_col]!r}, {pair_col} {r[pair_col]!r} in group "
                             f"{gkey}; add the distinguishing column to by= or aggregate first")
        wide = g.pivot(index=pair_col, columns=method_col, values=value)
        hib = _higher_is_better(gkey)
        for a, b in pairs:
            if a not in wide.columns or b not in wide.columns:
                continue
            row = {**gkey, "method_a": a, "method_b": b}
            row.update(wilcoxon_pair(wide[a].to_numpy(), wide[b].to_numpy(), alternative=alternative,
                                     zero_method=zero_method, test_method=test_method))
            med = row["median_difference"]
            fav = ""
            if hib is not None and np.isfinite(med) and med != 0:
                fav = a if (med > 0) == hib else b
            row["favours"] = fav
            row["_group"] = key
            rows.append(row)
    cols = [*by, "method_a", "method_b", "n", "n_nonzero", "statistic", "p_value", "rank_biserial",
            "median_difference", "mean_difference", "favours"]
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=cols)
    if correction == "holm":
        if family == "all":
            out["p_adjusted"] = holm(out["p_value"].to_numpy())
        else:
            out["p_adjusted"] = np.nan
            for _, idx in out.groupby("_group", sort=False).groups.items():
                out.loc[idx, "p_adjusted"] = holm(out.loc[idx, "p_value"].to_numpy())
        cols.insert(cols.index("p_value") + 1, "p_adjusted")
    out = out.drop(columns="_group")[cols]
    out.attrs["sanitas"] = {"test": "wilcoxon", "alternative": alternative, "zero_method": zero_method,
                            "test_method": test_method, "correction": correction, "family": family,
                            "difference": "method_a - method_b"}
    return out


def summarize(df: pd.DataFrame, *, by: Sequence[str] | None = None, method_col: str = "method",
              pair_col: str = "image", value: str = "value") -> pd.DataFrame:
    """Per method and group: n, median, 25th and 75th percentiles, mean and std of the values."""
    has_method = method_col in df.columns
    _check_frame(df.assign(**({} if has_method else {method_col: ""})), method_col, pair_col, value)
    if by is None:
        by = [c for c in df.columns if c not in (method_col, pair_col, value)]
    keys = ([method_col] if has_method else []) + list(by)
    g = df.groupby(keys, sort=False, dropna=False)[value]
    out = g.agg(n="count", median="median", q25=lambda v: v.quantile(0.25), q75=lambda v: v.quantile(0.75),
                mean="mean", std="std")
    return out.reset_index()
