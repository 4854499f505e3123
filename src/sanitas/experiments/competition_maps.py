"""The maps of every logit, and the distribution of the scores competition compares (gupta2019 figures 1-2).

gupta2019 section 3 motivates competition with the gradient x input maps of *all* logits of one image
(figure 1): "many pixels found irrelevant by humans receive heat in all the maps, and many relevant pixels
receive heat in more than one map"; the input shows through every label's map, and competition (CGI, the
figure's last map) keeps, per pixel, only the label whose vote is the largest (positive) or smallest
(negative). Section 4 then models a map as "noisy signal mixed with white noise" and supports it with
figure 2, the histogram of gradient x input scores, which "does seem similar to mixture of two Gaussians
(maybe three?), one centered at zero and other at some positive value"; competition then acts like
"sampling a subset of the salient pixels" (remark 2).

Check ``competition_all_logits`` (figure 1), on the trained model, for each base method ``m`` of
``methods`` and for its competitive version ``competitive(m)`` (computed from the same K maps):

* metric ``<similarity>`` (e.g. ``spearman_abs``), variant ``between classes``: per image, the mean over
  the K (K - 1) / 2 pairs of classes of the similarity of the two classes' maps (pairs where one map is
  constant, a class that wins no pixel, are left out; an image with no scored pair is ``constant_map``);
* figure ``all_logits.png``: the first image, one row per method, one column per class.

Check ``competition_scores`` (figure 2), the first method's map of each image's label on the trained model,
on the elements where the input is not zero (gradient x input is exactly 0 there: a spike the paper's
ImageNet images do not have). Per image, the scores divided by their standard deviation, a one- and a
two-Gaussian fit (maximum likelihood by EM, :func:`two_gaussians`); metrics ``bic_gain`` (BIC of one Gaussian minus
BIC of the mixture, per element: > 0 prefers the mixture), ``zero_component_mean`` (the mean of the
component nearer 0, in units of the scores' standard deviation), ``signal_component_mean`` (the other
component's mean), ``signal_weight`` and, for competition, ``kept_signal`` / ``kept_zero``: the fraction of
each component's elements (weighted by their posterior) that survive in the competitive map.
"""

from __future__ import annotations

import time
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sanitas.errors import ConfigError
from sanitas.experiments.runner_base import study_outcome
from sanitas.experiments.runners import Outcome, _data, build_methods, model_call, runner

if TYPE_CHECKING:
    import torch


def competitive_name(method: str) -> str:
    return f"competitive({method})"


def base_methods(spec: dict, default) -> dict:
    """The experiment's base methods (their competitive versions are computed here, from the same maps)."""
    methods = build_methods(spec.get("methods", default))
    wrapped = [n for n, e in methods.items() if getattr(e, "name", "") == "competitive"]
    if wrapped:
        raise ConfigError(f"this experiment takes base methods and adds their competitive versions itself; "
                          f"give {[e.inner.name for n, e in methods.items() if n in wrapped]} instead of {wrapped}")
    return methods


def compete_all(maps: torch.Tensor) -> torch.Tensor:
    """The competitive map of every class from the maps of all classes ``(N, K, ...)`` (gupta2019 section 3,
    per element as :class:`sanitas.explain.competition.Competitive` with ``channels="element"``)."""
    from sanitas.explain.competition import competition_mask

    mx = maps.amax(1, keepdim=True)
    mn = maps.amin(1, keepdim=True)
    return maps * competition_mask(maps, mx, mn)


def chosen_maps(maps: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each image's map of its class ``target`` from the maps of all classes ``(N, K, ...)``."""
    import torch

    idx = target.view(-1, 1, *([1] * (maps.dim() - 2)))
    return torch.take_along_dim(maps, idx, 1)[:, 0]


def between_class_similarity(maps: torch.Tensor, x: torch.Tensor, metrics: dict) -> dict:
    """Per image, the mean similarity of the maps of two different classes over all pairs of classes:
    ``{metric: float64 (N,)}``, NaN where every pair had a constant map (e.g. a class that wins no pixel)."""
    import torch

    from sanitas.engine import constant_maps

    k = maps.shape[1]
    const = torch.stack([constant_maps(maps[:, c]) for c in range(k)], 1).cpu()
    sums = {m: torch.zeros(maps.shape[0], dtype=torch.float64) for m in metrics}
    counts = {m: torch.zeros(maps.shape[0], dtype=torch.float64) for m in metrics}
    from sanitas.engine import score

    for c, d in combinations(range(k), 2):
        ok = ~(const[:, c] | const[:, d])
        for m, v in score(metrics, maps[:, c], maps[:, d], x).items():
            good = ok & torch.isfinite(v)
            sums[m] += torch.where(good, v, 0.0)
            counts[m] += good.double()
    return {m: torch.where(counts[m] > 0, sums[m] / counts[m].clamp_min(1), float("nan")) for m in metrics}


def _rows(method: str, variant: str, stage: int, values: dict, constant) -> pd.DataFrame:
    n = len(constant)
    return pd.concat([pd.DataFrame({"method": method, "variant": variant, "stage": stage, "metric": metric,
                                    "image": np.arange(n), "value": np.asarray(v, dtype=np.float64),
                                    "constant_map": np.asarray(constant, dtype=bool)})
                      for metric, v in values.items()], ignore_index=True)


def all_logits_table(model, x, methods: dict, metrics: dict) -> tuple[pd.DataFrame, dict]:
    """The table of ``competition_all_logits`` and every method's all-class maps of the first image."""
    parts, shown = [], {}
    for name, explainer in methods.items():
        plain = explainer(model, x, "all").detach()                      # (N, K, C, H, W)
        for label, maps in ((name, plain), (competitive_name(name), compete_all(plain))):
            sims = between_class_similarity(maps, x, metrics)
            constant = np.all([np.isnan(v.numpy()) for v in sims.values()], axis=0)
            parts.append(_rows(label, "between classes", 0, {m: v.numpy() for m, v in sims.items()}, constant))
            shown[label] = maps[0]
    return pd.concat(parts, ignore_index=True), shown


def _all_logits_figure(x, shown: dict, classes, label: int, path: Path) -> Path:
    from sanitas.report.figures import new_figure, save_figure

    k = next(iter(shown.values())).shape[0]
    names = list(classes) if classes is not None and len(classes) == k else [str(c) for c in range(k)]
    fig = new_figure(figsize=(1.1 * (k + 1) + 0.8, 1.25 * len(shown) + 0.45))
    fig.set_layout_engine("constrained", w_pad=0.01, h_pad=0.02, wspace=0.01, hspace=0.02)
    axes = fig.subplots(len(shown), k + 1, squeeze=False)
    for r, (method, maps) in enumerate(shown.items()):
        img = maps.float().sum(1).cpu().numpy()                       # (K, H, W): channels summed
        vmax = float(np.quantile(np.abs(img), 0.995)) or 1.0            # one scale per row: classes comparable
        axes[r, 0].imshow(x[0].float().mean(0).cpu().numpy(), cmap="gray")
        axes[r, 0].set_ylabel(method.replace("competitive(", "competitive(\n"), fontsize=7)
        for c in range(k):
            ax = axes[r, c + 1]
            im = ax.imshow(img[c], cmap="bwr", vmin=-vmax, vmax=vmax)
            if r == 0:
                ax.set_title(("* " if c == label else "") + names[c], fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=axes[r].tolist(), fraction=0.02, pad=0.01, shrink=0.9).ax.tick_params(labelsize=5)
    axes[0, 0].set_title("input", fontsize=7)
    fig.suptitle("maps of every logit of one image (red: positive, blue: negative; * = label); gupta2019 fig. 1",
                 fontsize=8)
    return save_figure(fig, path, dpi=120)


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    ok = table[~table["constant_map"]]
    return ok.groupby(["method", "metric"], sort=False)["value"].agg(["mean", "std", "count"]).reset_index()


@runner("competition_all_logits")
def run_all_logits(spec: dict, out: Path, quiet: bool) -> Outcome:
    """Similarity between the maps of different logits of an image, plain and competitive (module docs)."""
    from sanitas.checks.model_randomization import resolve_metrics

    t0 = time.perf_counter()
    src, net, ds = _data(spec, quiet)
    methods = base_methods(spec, ["input_x_gradient"])
    metrics = resolve_metrics(spec.get("metrics", ["spearman_abs", "spearman"]))
    with model_call(output=src.output):
        table, shown = all_logits_table(net, ds.x, methods, metrics)
    figs = [_all_logits_figure(ds.x, shown, getattr(ds, "classes", None), int(ds.y[0]),
                               out / "figures" / "all_logits.png")]
    summary = _summary(table)
    scalars = {f"mean/{r['metric']}/{r['method']}": float(r["mean"]) for r in summary.to_dict("records")}
    scalars["num_classes"] = float(next(iter(shown.values())).shape[0])
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: the maps of every logit (gupta2019 figure 1)", scalars=scalars,
        text=("Per image, the mean similarity between the maps of two different classes (all pairs), for each "
              "method and its competitive version computed from the same maps. gupta2019 figure 1: the input "
              "shows through the map of every logit; competition keeps each pixel in at most two maps."))


# -- figure 2: the distribution of the scores ---------------------------------------------------------------

def _normal_pdf(s: np.ndarray, mean, var) -> np.ndarray:
    return np.exp(-0.5 * (s - mean) ** 2 / var) / np.sqrt(2 * np.pi * var)


def two_gaussians(s: np.ndarray, iters: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Maximum-likelihood mixture of two Gaussians of 1-d data by EM: ``(weights, means, variances, log-lik)``.

    Deterministic: three starts (means at the quantiles 0.5/0.9, 0.1/0.5, 0.25/0.75, each variance that of
    the data), the best log-likelihood kept; variances floored at 1e-6 of the data's (a collapsed component)."""
    s = np.asarray(s, dtype=np.float64).ravel()
    var0 = float(s.var()) or 1.0
    best = None
    for lo, hi in ((0.5, 0.9), (0.1, 0.5), (0.25, 0.75)):
        w, mu, var = np.array([0.5, 0.5]), np.quantile(s, [lo, hi]), np.array([var0, var0])
        ll_old = -np.inf
        for _ in range(iters):
            dens = w * _normal_pdf(s[:, None], mu, var)                   # (n, 2)
            total = dens.sum(1).clip(min=np.finfo(float).tiny)
            ll = float(np.log(total).sum())
            r = dens / total[:, None]
            nk = r.sum(0).clip(min=1e-12)
            w, mu = nk / len(s), (r * s[:, None]).sum(0) / nk
            var = np.maximum((r * (s[:, None] - mu) ** 2).sum(0) / nk, 1e-6 * var0)
            if ll - ll_old < 1e-9 * len(s):
                break
            ll_old = ll
        dens = w * _normal_pdf(s[:, None], mu, var)
        ll = float(np.log(dens.sum(1).clip(min=np.finfo(float).tiny)).sum())
        if best is None or ll > best[3]:
            best = (w, mu, var, ll)
    return best


def mixture_stats(scores: np.ndarray, kept: np.ndarray) -> dict:
    """One image's standardized scores: a one- and a two-Gaussian fit, and which component's elements the
    competitive map kept (``kept``: bool per element). See the module docs for the keys."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s / (s.std() or 1.0)
    n = len(s)
    ll_one = float(np.log(_normal_pdf(s, s.mean(), s.var() or 1.0).clip(min=np.finfo(float).tiny)).sum())
    w, means, var, ll_two = two_gaussians(s)
    bic_one, bic_two = 2 * np.log(n) - 2 * ll_one, 5 * np.log(n) - 2 * ll_two
    z = int(np.argmin(np.abs(means)))
    dens = w * _normal_pdf(s[:, None], means, var)
    post = dens / dens.sum(1, keepdims=True).clip(min=np.finfo(float).tiny)
    kept = np.asarray(kept, dtype=np.float64).ravel()
    return {"bic_gain": (bic_one - bic_two) / n, "zero_component_mean": float(means[z]),
            "signal_component_mean": float(means[1 - z]), "signal_weight": float(w[1 - z]),
            "kept_signal": float((post[:, 1 - z] * kept).sum() / post[:, 1 - z].sum()),
            "kept_zero": float((post[:, z] * kept).sum() / post[:, z].sum()),
            "_scores": s, "_kept": kept.astype(bool)}


def _scores_figure(fits: list[dict], method: str, path: Path) -> Path:
    from sanitas.report.figures import new_figure, save_figure

    pooled = np.concatenate([f["_scores"] for f in fits])
    kept = np.concatenate([f["_kept"] for f in fits])
    weights, means, variances, _ = two_gaussians(pooled)
    lim = float(np.quantile(np.abs(pooled), 0.998))
    bins = np.linspace(-lim, lim, 81)
    t = np.linspace(-lim, lim, 400)
    fig = new_figure(figsize=(9.5, 3.6))
    axes = fig.subplots(1, 2)
    for ax, log in zip(axes, (False, True)):
        ax.hist(pooled, bins=bins, density=True, color="0.65", label=f"{method} scores, {len(fits)} images")
        ax.hist(pooled[kept], bins=bins, weights=np.full(kept.sum(), 1.0 / (len(pooled) * (bins[1] - bins[0]))),
                histtype="step", color="C3", lw=1.2, label="of which kept by competition")
        total = np.zeros_like(t)
        for j in range(2):
            m, sd, w = means[j], float(np.sqrt(variances[j])), weights[j]
            dens = w * np.exp(-0.5 * ((t - m) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))
            total += dens
            ax.plot(t, dens, color=f"C{j}", lw=1, ls="--", label=f"Gaussian {j + 1}: mean {m:+.2f}, sd {sd:.2f}")
        ax.plot(t, total, color="k", lw=1, label="two-Gaussian fit")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.5 / (len(pooled) * (bins[1] - bins[0])))
        ax.set_xlabel("score / its image's standard deviation (elements where the input is not 0)", fontsize=7)
        ax.set_title("log density" if log else "density", fontsize=9)
    axes[0].legend(fontsize=6)
    fig.suptitle("saliency scores of the label's map, all images pooled, and a two-Gaussian fit (gupta2019 fig. 2)",
                 fontsize=9)
    return save_figure(fig, path, dpi=110, tight=True)


@runner("competition_scores")
def run_scores(spec: dict, out: Path, quiet: bool) -> Outcome:
    """The scores' histogram and its two-Gaussian fit, and what competition keeps of each component."""
    import torch

    t0 = time.perf_counter()
    src, net, ds = _data(spec, quiet)
    name, explainer = next(iter(base_methods(spec, ["input_x_gradient"]).items()))
    with model_call(output=src.output):
        plain = explainer(net, ds.x, "all").detach()
    y = torch.as_tensor(ds.y).long().to(plain.device)
    chosen = chosen_maps(plain, y)
    kept = chosen_maps(compete_all(plain), y) != 0
    fits = []
    for i in range(len(chosen)):
        where = (ds.x[i] != 0).expand_as(chosen[i])
        fits.append(mixture_stats(chosen[i][where].cpu().numpy(), kept[i][where].cpu().numpy()))
    keys = [k for k in fits[0] if not k.startswith("_")]
    values = {k: np.array([f[k] for f in fits]) for k in keys}
    table = _rows(name, "trained", 0, values, np.zeros(len(fits), dtype=bool))
    figs = [_scores_figure(fits, name, out / "figures" / "scores_histogram.png")]
    summary = _summary(table)
    scalars = {f"mean/{k}": float(v.mean()) for k, v in values.items()}
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: the distribution of saliency scores (gupta2019 figure 2)",
        scalars=scalars,
        text=("Per image, the map of its label on the elements where the input is not 0, divided by its standard "
              "deviation, fitted with one and with two Gaussians; bic_gain > 0 prefers two. zero/signal component: "
              "the fitted Gaussian nearer to / farther from 0; kept_*: the fraction of each component's elements "
              "that the competitive map keeps (gupta2019 section 4, remark 2)."))
