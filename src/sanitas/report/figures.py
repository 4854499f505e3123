"""The papers' figures: map grids across stages, similarity-vs-stage curves with calibration bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sanitas.explain import postprocess as pp
from sanitas.report.tables import stage_labels

STYLES = ("absolute", "diverging", "two_channel")


def new_figure(figsize) -> Figure:
    """A matplotlib figure that renders with Agg without pyplot (the user's backend is left alone)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, **savefig_kwargs) -> Path:
    """Write ``fig`` as PNG to ``path``, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", **savefig_kwargs)
    return path


def _short(name: str, width: int = 14) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _cell_image(m: torch.Tensor, style: str):
    v = pp.visualize(m.unsqueeze(0), style)[0]
    if style == "two_channel":  # red = positive, blue = negative
        rgb = torch.zeros(3, *v.shape[-2:])
        rgb[0], rgb[2] = v[0], v[1]
        return rgb.permute(1, 2, 0).numpy(), {}
    if style == "diverging":
        return v.numpy(), {"cmap": "bwr", "vmin": -1, "vmax": 1}
    return v.numpy(), {"cmap": "gray", "vmin": 0, "vmax": 1}


def map_grid(maps: dict[tuple[int, str], torch.Tensor], stages: list[str], methods: list[str],
             image: torch.Tensor | None, path: str | Path, style: str = "absolute", index: int = 0,
             title: str | None = None) -> Path:
    """Rows: methods; columns: the input, then each stage. The map's sum is written under each cell."""
    ncols = len(stages) + (1 if image is not None else 0)
    fig = new_figure((1.25 * ncols + 0.8, 1.35 * len(methods) + 0.6))
    axes = fig.subplots(len(methods), ncols, squeeze=False)
    for r, method in enumerate(methods):
        c0 = 0
        if image is not None:
            img = image.permute(1, 2, 0).numpy()
            axes[r, 0].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
            c0 = 1
            if r == 0:
                axes[r, 0].set_title("input", fontsize=7)
        for c, _stage in enumerate(stages):
            ax = axes[r, c + c0]
            m = maps.get((c, method))
            if m is not None and index < len(m):
                arr, kw = _cell_image(m[index], style)
                ax.imshow(arr, **kw)
                ax.set_xlabel(f"{float(m[index].sum()):.3g}", fontsize=6, labelpad=1)
            if r == 0:
                ax.set_title(_short(stages[c], 18), fontsize=6, rotation=30, ha="left")
        axes[r, 0].set_ylabel(_short(method, 18), fontsize=7, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.3)
    return save_figure(fig, path, dpi=110)


def similarity_curves(summary: pd.DataFrame, metric: str, path: str | Path, calibration: pd.DataFrame | None = None,
                      title: str | None = None) -> Path:
    """Mean similarity (95% bootstrap CI) per stage for each method, with the calibration band."""
    s = summary[summary["metric"] == metric].sort_values("stage")
    fig = new_figure((max(4.5, 0.45 * s["stage"].nunique() + 2.5), 3.2))
    ax = fig.subplots()
    labels = s.drop_duplicates("stage")[["stage", "variant"]]
    for method, g in s.groupby("method", sort=False):
        ax.plot(g["stage"], g["mean"], marker="o", ms=3, label=method)
        ax.fill_between(g["stage"], g["ci_low"], g["ci_high"], alpha=0.15)
    if calibration is not None and len(calibration):
        cal = calibration[calibration["metric"] == metric]
        for _, row in cal.iterrows():
            base = str(row["baseline"])
            if "dominance" in base or "x*u" in base:
                ax.axhline(row["mean"], color="k", ls="--", lw=0.8, label=f"null: {base}")
            else:
                ax.axhspan(row["ci_low"], row["ci_high"], color="grey", alpha=0.12)
        if len(cal):
            ax.axhspan(np.nan, np.nan, color="grey", alpha=0.12, label="random-mask band")
    ax.set_xticks(labels["stage"], [_short(v, 18) for v in labels["variant"]], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_xlabel("randomized up to (cumulative)" if "cascad" in (title or "") else "stage")
    ax.set_title(title or metric, fontsize=9)
    ax.legend(fontsize=6, loc="best", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def metric_bars(summary: pd.DataFrame, metric: str, path: str | Path, title: str | None = None) -> Path:
    """Bars of a metric per method, one bar per compared model, with 95% bootstrap CIs (seed 000, fig. 6)."""
    s = summary[(summary["metric"] == metric) & (summary["stage"] > 0)]
    methods = list(dict.fromkeys(s["method"]))
    variants = list(dict.fromkeys(s.sort_values("stage")["variant"]))
    width = 0.8 / max(1, len(variants))
    fig = new_figure((max(4.5, 0.9 * len(methods) + 1.5), 3.2))
    ax = fig.subplots()
    for j, v in enumerate(variants):
        g = s[s["variant"] == v].set_index("method").reindex(methods)
        xs = np.arange(len(methods)) + (j - (len(variants) - 1) / 2) * width
        err = np.vstack([g["mean"] - g["ci_low"], g["ci_high"] - g["mean"]])
        ax.bar(xs, g["mean"], width, yerr=err, capsize=2, label=v)
    ax.set_xticks(np.arange(len(methods)), [_short(m, 16) for m in methods], rotation=30, ha="right", fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel(f"{metric} vs reference")
    ax.set_title(title or metric, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def check_figures(result, out_dir: str | Path, styles=STYLES, images: int = 2) -> list[Path]:
    """All figures of a check result into ``out_dir/figures``."""
    fig_dir = Path(out_dir) / "figures"
    methods = list(dict.fromkeys(result.table["method"])) if len(result.table) else []
    paths = []
    kept = max((len(m) for m in result.maps.values()), default=0)
    shown = min(images, kept if result.images is None else min(kept, len(result.images)))
    labels = list(stage_labels(result.meta, result.stages).values())
    for i in range(shown):
        image = None if result.images is None else result.images[i]
        for style in styles:
            paths.append(map_grid(result.maps, labels, methods, image, fig_dir /
                                  f"maps-image{i}-{style}.png", style=style, index=i,
                                  title=f"{result.kind}: image {i} ({style})"))
    summary = result.summary()
    labels_by_name = stage_labels(result.meta, result.stages)
    if result.kind != "model_randomization":  # two or three models: bars, not curves
        for metric in dict.fromkeys(result.table["metric"]):
            paths.append(metric_bars(summary, metric, fig_dir / f"curve-{metric}.png",
                                     title=f"{result.kind}: {metric}"))
        return paths
    summary = summary.assign(variant=summary["variant"].astype(str).map(lambda v: labels_by_name.get(v, v)))
    for metric in dict.fromkeys(result.table["metric"]):
        paths.append(similarity_curves(summary, metric, fig_dir / f"curve-{metric}.png", result.calibration,
                                       title=f"{result.kind} ({result.meta['config'].get('mode', '')}): {metric}"))
    return paths


def bias_share_bars(layers: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Per model, bars of the mean |A^{b,l}| / |f_c| per layer (seed 002, Eq. 14), one bar per variant.

    ``layers`` is :func:`sanitas.evaluate.biases.bias_summary` per model with ``model`` and
    ``variant`` columns (the input, which has no bias, is left out).
    """
    s = layers[layers["stage"] > 0]
    model_names = list(dict.fromkeys(s["model"]))
    fig = new_figure((max(5.0, 0.3 * s.groupby("model")["stage"].nunique().max() + 2.0), 2.3 * len(model_names) + 0.4))
    axes = fig.subplots(len(model_names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, model_names):
        g = s[s["model"] == name]
        variants = list(dict.fromkeys(g["variant"]))
        stages = list(dict.fromkeys(g.sort_values("stage")["layer"]))
        width = 0.8 / max(1, len(variants))
        for j, v in enumerate(variants):
            gv = g[g["variant"] == v].set_index("layer").reindex(stages)
            xs = np.arange(len(stages)) + (j - (len(variants) - 1) / 2) * width
            ax.bar(xs, gv["bias_share_mean"], width, label=v)
        # layer names differ at their ends (stages.stage2.block1.bn1 vs ...bn2): keep the tail
        ax.set_xticks(np.arange(len(stages)), [n if len(n) <= 18 else "…" + n[-17:] for n in stages], rotation=35,
                      ha="right", fontsize=6)
        ax.set_ylabel("mean |A_b| / |f|", fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        if len(variants) > 1:
            ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def bias_regression_scatter(scatter: dict, path: str | Path, max_points: int = 3000) -> Path:
    """Per model, f^{b=0}_c against f_c over images and classes, with the fitted line and the identity.

    ``scatter`` maps a model name to ``(logits, zero_bias_logits, alpha, beta)``.
    """
    names = list(scatter)
    cols = min(3, max(1, len(names)))
    rows = (len(names) + cols - 1) // cols
    fig = new_figure((3.0 * cols + 0.3, 2.8 * rows + 0.3))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        f, f0, alpha, beta = scatter[name]
        f, f0 = np.asarray(f).reshape(-1), np.asarray(f0).reshape(-1)
        if len(f) > max_points:
            idx = np.random.default_rng(0).choice(len(f), max_points, replace=False)
            f, f0 = f[idx], f0[idx]
        ax.scatter(f, f0, s=2, alpha=0.4)
        lo, hi = float(min(f.min(), f0.min())), float(max(f.max(), f0.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.7, label="identity")
        ax.plot([lo, hi], [alpha * lo + beta, alpha * hi + beta], "r-", lw=0.9,
                label=f"alpha={alpha:.2f}, beta={beta:.2f}")
        ax.set_xlabel("f (original)", fontsize=7)
        ax.set_ylabel("f with biases = 0", fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=6)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
