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


def new_figure(figsize, dpi: float | None = None) -> Figure:
    """A matplotlib figure that renders with Agg without pyplot (the user's backend is left alone)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, tight: bool = False, **savefig_kwargs) -> Path:
    """Write ``fig`` as PNG to ``path``, creating the folder (``tight``: lay it out with ``tight_layout`` first)."""
    if tight:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", **savefig_kwargs)
    return path


def _short(name: str, width: int = 14) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _cell_rgb(m: torch.Tensor, style: str) -> np.ndarray:
    """One map as an ``(H, W, 3)`` RGB array in [0, 1], in the given style."""
    v = pp.visualize(m.unsqueeze(0), style)[0]
    if style == "two_channel":  # red = positive, blue = negative
        rgb = torch.zeros(3, *v.shape[-2:])
        rgb[0], rgb[2] = v[0], v[1]
        return rgb.permute(1, 2, 0).numpy()
    if style == "diverging":
        return _BWR((v.numpy() + 1) / 2)[..., :3]
    return np.repeat(v.numpy()[..., None], 3, axis=2)


def _input_rgb(image: torch.Tensor) -> np.ndarray:
    """An input image as RGB in [0, 1]: grey images stretched to their own range (as imshow shows them)."""
    img = image.detach().float().permute(1, 2, 0).numpy()
    if img.shape[-1] != 1:
        return np.clip(img[..., :3], 0, 1)
    g = img[..., 0]
    lo, hi = float(g.min()), float(g.max())
    g = (g - lo) / (hi - lo) if hi > lo else np.zeros_like(g)
    return np.repeat(g[..., None], 3, axis=2)


class _Colormap:
    """matplotlib's ``bwr`` colormap, fetched when first used (matplotlib is imported by the figures only)."""

    def __call__(self, values):
        from matplotlib import colormaps

        return colormaps["bwr"](values)


_BWR = _Colormap()


def map_grid(maps: dict[tuple[int, str], torch.Tensor], stages: list[str], methods: list[str],
             image: torch.Tensor | None, path: str | Path, style: str = "absolute", index: int = 0,
             title: str | None = None) -> Path:
    """Rows: methods; columns: the input, then each stage. The map's sum is written under each cell.

    One image (a mosaic of the cells) on one axes: a grid of axes per cell took seconds per figure.
    """
    cells: dict[tuple[int, int], tuple[np.ndarray, str]] = {}
    shape = None
    for r, method in enumerate(methods):
        for c in range(len(stages)):
            m = maps.get((c, method))
            if m is not None and index < len(m) and m[index].dim() == 3:
                cells[(r, c)] = (_cell_rgb(m[index], style), f"{float(m[index].sum()):.3g}")
                shape = shape or cells[(r, c)][0].shape[:2]
    if shape is None and image is not None and image.dim() == 3:
        shape = tuple(image.shape[-2:])
    shape = shape or (1, 1)
    first = 1 if image is not None else 0
    ncols = len(stages) + first
    h, w = shape
    gap = max(1, round(0.08 * max(h, w)))
    mosaic = np.ones((len(methods) * (h + gap), ncols * (w + gap), 3))
    if image is not None and image.dim() == 3 and tuple(image.shape[-2:]) == (h, w):
        inp = _input_rgb(image)
        for r in range(len(methods)):
            mosaic[r * (h + gap):r * (h + gap) + h, :w] = inp
    for (r, c), (rgb, _) in cells.items():
        if rgb.shape[:2] == (h, w):
            mosaic[r * (h + gap):r * (h + gap) + h, (c + first) * (w + gap):(c + first) * (w + gap) + w] = rgb
    fig = new_figure((1.25 * ncols + 1.4, 1.35 * len(methods) + 1.0))
    ax = fig.add_axes((1.2 / (1.25 * ncols + 1.4), 0.25 / (1.35 * len(methods) + 1.0),
                       1.25 * ncols / (1.25 * ncols + 1.4), 1.35 * len(methods) / (1.35 * len(methods) + 1.0)))
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    for c, label in enumerate((["input"] if image is not None else []) + [_short(s, 18) for s in stages]):
        ax.text((c + 0.5) * (w + gap) - gap / 2, -0.15 * h, label, fontsize=6 if c >= first else 7,
                rotation=30 if c >= first else 0, ha="left" if c >= first else "center", va="bottom")
    for r, method in enumerate(methods):
        ax.text(-0.15 * w, (r + 0.5) * (h + gap) - gap / 2, _short(method, 18), fontsize=7, ha="right", va="center")
        for c in range(len(stages)):
            if (r, c) in cells:
                ax.text((c + first + 0.5) * (w + gap) - gap / 2, r * (h + gap) + h, cells[(r, c)][1], fontsize=5,
                        ha="center", va="top")
    if title:
        fig.suptitle(title, fontsize=8, y=0.995)
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
    """Bars of a metric per method, one bar per compared model, with 95% bootstrap CIs (adebayo2018, fig. 6)."""
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
    """Per model, bars of the mean |A^{b,l}| / |f_c| per layer (grabska2020, Eq. 14), one bar per variant.

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
