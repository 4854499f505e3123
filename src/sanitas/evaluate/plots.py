"""Box plots of per-image scores per method, like grabska2020's figures 5, 6 and 14-16.

Figures are drawn on matplotlib's Agg canvas without pyplot, so importing this module never
changes the user's matplotlib backend and works on machines without a display.

>>> fig = boxplot_scores(df, "delta_e_minus", path="figures/delta_e_minus.png")   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sanitas.errors import InputError
from sanitas.report.figures import new_figure, save_figure
from sanitas.evaluate.perturbation import HIGHER_IS_BETTER
from sanitas.evaluate.stats import pairwise_wilcoxon

__all__ = ["boxplot_scores", "boxplot_metrics"]

_LABELS = {"e_minus": "$e_-$", "e_plus": "$e_+$", "e_delta": r"$e_\Delta$",
           "e_minus_xi": r"$e^\xi_-$", "e_plus_xi": r"$e^\xi_+$", "e_delta_xi": r"$e^\xi_\Delta$",
           "delta_e_minus": r"$\delta e_-$", "delta_e_plus": r"$\delta e_+$", "delta_e_delta": r"$\delta e_\Delta$"}


def p_label(p: float) -> str:
    """A p-value annotation: ``p=0.012``, ``p<1e-4`` (rounded up to a power of ten), ``p=n/a``."""
    if not np.isfinite(p):
        return "p=n/a"
    if p < 1e-3:
        return f"p<1e{int(np.floor(np.log10(max(p, 1e-300)))) + 1}"
    return f"p={p:.3f}"


def _draw(ax, df: pd.DataFrame, metric: str, methods: Sequence[str] | None, reference: str | None,
          reverse_y: bool | None, method_col: str, value: str, colors) -> None:
    data = df[df["metric"] == metric] if "metric" in df.columns else df
    if data.empty:
        have = sorted(df["metric"].unique()) if "metric" in df.columns else []
        raise InputError(f"no rows for metric {metric!r}; the table has {have}")
    if method_col not in data.columns:
        data = data.assign(**{method_col: "map"})
    present = list(dict.fromkeys(data[method_col]))
    methods = present if methods is None else list(methods)
    missing = [m for m in methods if m not in present]
    if missing:
        raise InputError(f"method(s) {missing} not in the table; it has {present}")
    samples = [data.loc[data[method_col] == m, value].to_numpy(dtype=float) for m in methods]
    samples = [s[np.isfinite(s)] for s in samples]
    bp = ax.boxplot(samples, whis=(5, 95), showfliers=False, patch_artist=True, widths=0.6,
                    medianprops={"color": "black"})
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right")
    for i, patch in enumerate(bp["boxes"]):
        patch.set_facecolor(colors[i % len(colors)] if colors else f"C{i % 10}")
        patch.set_alpha(0.75)
    if metric.startswith("delta"):
        ax.axhline(0.0, color="grey", lw=0.6, ls=":")
    ax.set_ylabel(_LABELS.get(metric, metric))
    if reverse_y is None:
        reverse_y = HIGHER_IS_BETTER.get(metric) is False
    hib = HIGHER_IS_BETTER.get(metric)
    direction = {True: "higher is better", False: "lower is better"}.get(hib, "diagnostic")
    ax.set_title(f"{metric} ({direction}{', axis reversed' if reverse_y else ''})", fontsize=8)
    annotate = reference is not None and len(methods) > 1
    lo, hi = ax.get_ylim()
    room = 0.12 * (hi - lo) if annotate else 0.0
    if reverse_y:  # the top of the panel shows the low values
        ax.set_ylim(hi, lo - room)
    else:
        ax.set_ylim(lo, hi + room)
    if annotate:
        table = pairwise_wilcoxon(data.assign(metric=metric)[[method_col, "image", value, "metric"]],
                                  methods=methods, reference=reference, method_col=method_col, value=value)
        for _, r in table.iterrows():
            x = methods.index(r["method_a"]) + 1
            ax.annotate(p_label(r["p_adjusted"]), (x, 0.985), xycoords=("data", "axes fraction"), ha="center",
                        va="top", fontsize=7)
        ax.annotate("ref.", (methods.index(reference) + 1, 0.985), xycoords=("data", "axes fraction"),
                    ha="center", va="top", fontsize=7, style="italic")
    ax.grid(axis="y", alpha=0.3)


def boxplot_scores(df: pd.DataFrame, metric: str, *, path: str | Path | None = None,
                   methods: Sequence[str] | None = None, reference: str | None = None,
                   reverse_y: bool | None = None, title: str | None = None, method_col: str = "method",
                   value: str = "value", colors: Sequence[str] | None = None, figsize=None, dpi: int = 120) -> Figure:
    """One box per method of the per-image values of ``metric`` (boxes: 25th-75th percentiles,
    line: median, whiskers: 5th-95th percentiles, as in grabska2020).

    ``reference``: annotate each other method with its Wilcoxon signed-rank p-value against it
    (Holm-adjusted). ``reverse_y``: default reverses the axis for metrics where lower is better
    (``e_plus``, ``delta_e_plus``), so that up always means better, as in grabska2020's figure 14.
    Saves a PNG at ``path`` (parent folders created) and returns the figure.
    """
    n = len(methods) if methods is not None else (df[method_col].nunique() if method_col in df.columns else 1)
    fig = new_figure(figsize or (max(3.5, 0.6 * n + 1.5), 3.6), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    _draw(ax, df, metric, methods, reference, reverse_y, method_col, value, colors)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def boxplot_metrics(df: pd.DataFrame, metrics: Sequence[str] = ("delta_e_minus", "delta_e_plus", "delta_e_delta"),
                    *, path: str | Path | None = None, methods: Sequence[str] | None = None,
                    reference: str | None = None, method_col: str = "method", value: str = "value",
                    colors: Sequence[str] | None = None, dpi: int = 120) -> Figure:
    """One panel per metric, stacked (grabska2020 figures 14-16); axes reversed where lower is better."""
    metrics = list(metrics)
    if not metrics:
        raise InputError("metrics is empty; name at least one metric to plot")
    n = len(methods) if methods is not None else (df[method_col].nunique() if method_col in df.columns else 1)
    fig = new_figure((max(3.5, 0.6 * n + 1.5), 2.8 * len(metrics)), dpi=dpi)
    for i, metric in enumerate(metrics, 1):
        _draw(fig.add_subplot(len(metrics), 1, i), df, metric, methods, reference, None, method_col, value, colors)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
