"""Figures of :func:`sanitas.evaluate.evaluate_quality`: box plots per metric, activity vs bias per layer
(grabska2020's Fig. 5) and single layers vs top-down aggregates (Fig. 6)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sanitas.evaluate.perturbation import HIGHER_IS_BETTER
from sanitas.evaluate.plots import _LABELS, boxplot_metrics, p_label
from sanitas.evaluate.quality_result import QualityResult
from sanitas.report.figures import new_figure, save_figure


def _values(res: QualityResult, method: str, metric: str) -> np.ndarray:
    t = res.table
    v = t.loc[(t.method == method) & (t.metric == metric), "value"].to_numpy(dtype=float)
    return v[np.isfinite(v)]


def _reference_band(ax, res: QualityResult, method: str, metric: str, color: str, label: str) -> None:
    if method not in res.methods:
        return
    v = _values(res, method, metric)
    if v.size == 0:
        return
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    ax.axhspan(q25, q75, color=color, alpha=0.15, lw=0)
    ax.axhline(med, color=color, lw=1.2, label=f"{label} (median, IQR)")


def _boxes(ax, data: list[np.ndarray], positions: np.ndarray, color: str, label: str) -> None:
    """Box plots (5th-95th percentile whiskers, no fliers) in one colour, labelled once for the legend."""
    bp = ax.boxplot(data, positions=positions, widths=0.32, whis=(5, 95), showfliers=False, patch_artist=True,
                    medianprops={"color": "black"}, manage_ticks=False)
    for p in bp["boxes"]:
        p.set_facecolor(color)
        p.set_alpha(0.7)
    bp["boxes"][0].set_label(label)


def _finish_axis(ax, metric: str) -> None:
    if metric.startswith("delta"):
        ax.axhline(0.0, color="grey", lw=0.6, ls=":")
    hib = HIGHER_IS_BETTER.get(metric)
    ax.set_ylabel(_LABELS.get(metric, metric) + ("  (higher is better)" if hib else
                                                 "  (lower is better, axis reversed)" if hib is False else ""))
    if hib is False:
        lo, hi = ax.get_ylim()
        ax.set_ylim(hi, lo)
    ax.grid(axis="y", alpha=0.3)


def layers_figure(res: QualityResult, path: Path, metrics: Sequence[str] = ("delta_e_minus", "e_minus")) -> Path | None:
    """grabska2020 Fig. 5: activity (blue) vs bias (red) maps per layer, gradient in grey; Holm p-values."""
    lt = res.layer_table(metrics)
    if lt.empty:
        return None
    metrics = [m for m in metrics if m in set(lt.metric)]
    idx = sorted(set(lt.layer_index))
    fig = new_figure((max(5.0, 0.8 * len(idx) + 2.5), 3.2 * len(metrics)))
    for k, metric in enumerate(metrics, 1):
        ax = fig.add_subplot(len(metrics), 1, k)
        _reference_band(ax, res, "gradient", metric, "grey", "gradient")
        for off, fam, color in ((-0.18, "activity", "tab:blue"), (0.18, "bias", "tab:red")):
            _boxes(ax, [_values(res, f"{fam}[{i}]", metric) for i in idx], np.array(idx) + off, color,
                   f"{fam} $|a^{{{'h' if fam == 'activity' else 'b'},l}}|$")
        ax.set_xticks(idx, [str(i) for i in idx])
        ax.set_xlim(min(idx) - 0.6, max(idx) + 0.6)
        _finish_axis(ax, metric)
        sub = lt[lt.metric == metric].set_index("layer_index")
        for i in idx:
            ax.annotate(p_label(sub.loc[i, "p_holm"]), (i, 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=7)
        if k == len(metrics):
            ax.set_xlabel("layer (forward order; names in the report)")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("activity vs bias attributions per layer (Wilcoxon, Holm over layers)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def aggregates_figure(res: QualityResult, path: Path, metrics: Sequence[str] = ("delta_e_minus", "e_minus")) -> Path | None:
    """grabska2020 Fig. 6: single layers (blue) and top-down aggregates (cyan) by layer, with FullGrad
    (purple), the input gradient (grey) and random maps (black) as bands; the best aggregate starred."""
    single = sorted((s.layer_index, s.label) for s in res.specs if s.family == "activity")
    aggr = [s for s in res.specs if s.family == "aggregate"]
    if not single and not aggr:
        return None
    L = max([i for i, _ in single] + [s.layer_index - 1 for s in aggr if s.label == "all+input"] +
            [s.layer_index for s in aggr if s.label != "all+input"])
    best = res.best_aggregate
    fig = new_figure((max(5.5, 0.7 * (L + 1) + 3.0), 3.2 * len(metrics)))
    for k, metric in enumerate(metrics, 1):
        ax = fig.add_subplot(len(metrics), 1, k)
        for m, color, lab in (("fullgrad", "tab:purple", "FullGrad"), ("gradient", "grey", "gradient"),
                              ("random", "black", "random")):
            _reference_band(ax, res, m, metric, color, lab)
        if single:
            _boxes(ax, [_values(res, m, metric) for _, m in single],
                   np.array([i for i, _ in single], dtype=float) - 0.18, "tab:blue", "single layer l")
        # top-k aggregates start at layer l0 = L - k + 1; all+input is drawn at l0 = 0
        ag = [(0 if s.label == "all+input" else L - s.layer_index + 1, s.label) for s in aggr]
        if ag:
            _boxes(ax, [_values(res, m, metric) for _, m in ag], np.array([p for p, _ in ag]) + 0.18, "tab:cyan",
                   "aggregate of layers l..L (0: + input)")
        if best is not None:
            if best.startswith("activity["):
                bx = [i for i, m in single if m == best][0] - 0.18
            else:
                bx = [p for p, m in ag if m == best][0] + 0.18
            ax.annotate("best", (bx, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=7,
                        color="tab:green", fontweight="bold")
        ticks = list(range(0 if ag else 1, L + 1))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlim(ticks[0] - 0.6, L + 0.6)
        _finish_axis(ax, metric)
        if k == len(metrics):
            ax.set_xlabel("layer l (single) / first layer l0 of the top-down aggregate")
        ax.legend(fontsize=6, loc="best", ncol=2)
    fig.suptitle("single layers vs top-down aggregates (grabska2020 Fig. 6)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def quality_figures(res: QualityResult, fig_dir: Path) -> list[Path]:
    """All figures of a quality run: per-metric box plots of every method (grabska2020 Figs. 14-16),
    the activity-vs-bias layer figure (Fig. 5) and the aggregates figure (Fig. 6)."""
    fig_dir = Path(fig_dir)
    paths: list[Path] = []
    present = set(res.table.metric)
    for name, metrics in (("delta_metrics", ("delta_e_minus", "delta_e_plus", "delta_e_delta")),
                          ("e_metrics", ("e_minus", "e_plus", "e_delta")),
                          ("xi_metrics", ("e_minus_xi", "e_plus_xi", "e_delta_xi"))):
        ms = [m for m in metrics if m in present]
        if ms:
            # p-values are in wilcoxon.csv and the report (annotating them here would re-run the tests)
            boxplot_metrics(res.table, ms, methods=res.methods, path=fig_dir / f"{name}.png")
            paths.append(fig_dir / f"{name}.png")
    for fn, name in ((layers_figure, "layers.png"), (aggregates_figure, "aggregates.png")):
        p = fn(res, fig_dir / name)
        if p is not None:
            paths.append(p)
    return paths
