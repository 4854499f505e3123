"""The papers' figures: map grids across stages, similarity-vs-stage curves with calibration bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sanitas.explain import postprocess as pp

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
    for i in range(min(images, 0 if result.images is None else len(result.images))):
        for style in styles:
            paths.append(map_grid(result.maps, result.stages, methods, result.images[i], fig_dir /
                                  f"maps-image{i}-{style}.png", style=style, index=i,
                                  title=f"{result.kind}: image {i} ({style})"))
    summary = result.summary()
    if result.kind != "model_randomization":  # two or three models: bars, not curves
        for metric in dict.fromkeys(result.table["metric"]):
            paths.append(metric_bars(summary, metric, fig_dir / f"curve-{metric}.png",
                                     title=f"{result.kind}: {metric}"))
        return paths
    for metric in dict.fromkeys(result.table["metric"]):
        paths.append(similarity_curves(summary, metric, fig_dir / f"curve-{metric}.png", result.calibration,
                                       title=f"{result.kind} ({result.meta['config'].get('mode', '')}): {metric}"))
    return paths
