"""The three perturbation metrics and the down-sampling artefact (grabska2020 supplement F, Figs. 14-16).

Supplement F compares the metric of the main text, delta e- (least salient pixels removed first), with
delta e+ (most salient first) and delta e_Delta = delta e- - delta e+ (all relative to shuffled maps xi of
other images, Eq. 18), and the raw e-, e+, e_Delta:

* F.1: delta e- and delta e+ agree (a good map is also discriminative when its most salient pixels go
  first), the effect of delta e- is about twice that of delta e+ (15% against 8% for VGG-16's "All
  layers"), and "the sum of the two effects ... yields a stronger effect size and higher statistical
  significance"; the raw metrics disagree: e- is large (20-40%) while e+ is small (~4%) and "all saliency
  methods appear similar" under e+ (Fig. 15).
* F.2: with the shuffled maps as the maps, e^xi_- and e^xi_+ measure how perturbative a method's patterns
  are: aggregates over layers are smoother and less perturbative (higher e^xi) than single layers, and
  e^xi_Delta is "not only non-zero, but structured", so the comparison with noise is needed. In
  ResNet-50 "there are clear local minima for every layer just before the down-sampling operation"
  (strided convolutions, no pooling), missing from VGG-16 (max-pooling), where "the down-sampling seems
  to have a positive effect on the preceding layers"; these artefacts "do not show in the e_Delta",
  which is why the paper recommends e_Delta over e-.

The check ``flip_metrics`` measures this on each model of the experiment (``variant`` = model): per-layer
saliency maps bilinearUpsample(|a^{h,l}|) of the layers of :func:`depth_layers` (stages 1..L; the stem and
blocks of a ResNet, the convolutions of a VGG), and at stage 0 ``all-layers`` (sum over the layers of
Psi(a^{h,l}) = upsample(rescale(|a|)), Eq. 16) and ``gradient`` (sum over channels of |df/dx|), with every
metric of :func:`perturbation_scores` (both orders). A *down-sampling point* is a layer whose successor has a
smaller spatial size and whose predecessor has its own size; method ``downsampling`` (stage 0) holds, per
image, the mean over those points of metric(layer) - metric(predecessor): negative for a local minimum just
before the down-sampling.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sanitas.experiments.runner_base import study_outcome
from sanitas.experiments.runners import Outcome, dataset_of, model_call, model_sources, runner
from sanitas.experiments.zero_bias_resnet import TRAIN_KEYS, _rows, attributions, layer_maps, spec_layers

if TYPE_CHECKING:  # torch is imported where it runs: reading a finished study's tables needs none
    import torch

DIP_METRICS = ("e_minus_xi", "e_plus_xi", "e_delta_xi", "delta_e_minus", "delta_e_plus", "delta_e_delta")


def downsampling_points(sizes: list[tuple[int, ...]]) -> list[int]:
    """Indices ``l`` (into ``sizes``) with ``sizes[l + 1] < sizes[l] == sizes[l - 1]`` (elementwise smaller)."""
    return [i for i in range(1, len(sizes) - 1)
            if sizes[i - 1] == sizes[i] and all(b < a for a, b in zip(sizes[i], sizes[i + 1]))]


def model_table(variant: str, model, x: torch.Tensor, layers: list[str], *, n_shuffles: int, seed: int) -> pd.DataFrame:
    """The rows of one model (see the module docs)."""
    from sanitas.evaluate.perturbation import perturbation_scores
    from sanitas.explain.layers import psi

    size = tuple(x.shape[-2:])
    own = attributions(model, x, layers)
    hidden = own["maps"][1:]
    maps = {"gradient@0": own["grad"].abs().sum(1),
            "all-layers@0": sum(psi(a.unsqueeze(0), size)[0] for a in hidden)}
    maps.update({f"layer@{s}": m for s, m in enumerate(layer_maps(hidden, size, signed=False), start=1)})
    df = perturbation_scores(model, x, maps, n_shuffles=n_shuffles, seed=seed, quiet=True)
    parts = []
    for key, part in df.groupby("method", sort=False):
        method, stage = key.rsplit("@", 1)
        for metric, rows in part.groupby("metric", sort=False):
            parts.append(_rows(variant, method, int(stage), metric, rows.sort_values("image")["value"].to_numpy()))
    table = pd.concat(parts, ignore_index=True)
    points = downsampling_points([tuple(a.shape[-2:]) for a in hidden])
    for metric in DIP_METRICS if points else ():
        per_stage = {s: g.sort_values("image")["value"].to_numpy()
                     for s, g in table[(table.method == "layer") & (table.metric == metric)].groupby("stage")}
        dip = np.mean([per_stage[p + 1] - per_stage[p] for p in points], axis=0)
        table = pd.concat([table, _rows(variant, "downsampling", 0, metric, dip)], ignore_index=True)
    table.attrs["points"] = [layers[p] for p in points]
    return table


def _wilcoxon_p(v: np.ndarray) -> float:
    from scipy.stats import wilcoxon

    v = v[np.isfinite(v)]
    if len(v) < 2 or not np.any(v != 0):
        return 1.0
    return float(wilcoxon(v, zero_method="zsplit").pvalue)


def scalars_of(table: pd.DataFrame) -> dict[str, float]:
    """``mean/<metric>/<variant>/<method>`` over stages; ``p/<metric>/<variant>/<method>`` (two-sided Wilcoxon
    over images of the per-image value, stage-0 methods and the per-image mean over layers);
    ``stronger_delta/<variant>``: the share of the model's methods (gradient, all-layers, each layer) whose
    delta e_Delta has a smaller p than its delta e-; ``eplus_spread_ratio/<variant>``: the range over those
    methods of mean e+ divided by that of mean e-."""
    out: dict[str, float] = {}
    for (metric, variant, method), g in table.groupby(["metric", "variant", "method"]):
        per_image = g.groupby("image")["value"].mean().to_numpy()
        out[f"mean/{metric}/{variant}/{method}"] = float(per_image.mean())
        out[f"p/{metric}/{variant}/{method}"] = _wilcoxon_p(per_image)
    for variant, t in table[table.method != "downsampling"].groupby("variant"):
        p = {}
        for metric in ("delta_e_minus", "delta_e_delta"):
            rows = t[t.metric == metric]
            p[metric] = {(m, s): _wilcoxon_p(g.sort_values("image")["value"].to_numpy())
                         for (m, s), g in rows.groupby(["method", "stage"])}
        keys = list(p["delta_e_minus"])
        out[f"stronger_delta/{variant}"] = float(np.mean([p["delta_e_delta"][k] < p["delta_e_minus"][k] for k in keys]))
        means = {metric: t[t.metric == metric].groupby(["method", "stage"])["value"].mean()
                 for metric in ("e_minus", "e_plus")}
        spread = {k: float(v.max() - v.min()) for k, v in means.items()}
        out[f"eplus_spread_ratio/{variant}"] = spread["e_plus"] / spread["e_minus"] if spread["e_minus"] > 0 \
            else float("nan")
    return out


def _figure(table: pd.DataFrame, points: dict, out: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    from sanitas.report.figures import new_figure, save_figure

    variants = list(dict.fromkeys(table["variant"]))
    rows = [("delta_e_minus", "delta_e_plus", "delta_e_delta"), ("e_minus_xi", "e_plus_xi", "e_delta_xi")]
    fig = new_figure(figsize=(3.0 * len(variants), 4.8))
    axes = fig.subplots(2, len(variants), squeeze=False)
    for c, variant in enumerate(variants):
        t = table[(table.variant == variant) & (table.method == "layer")]
        for r, metrics in enumerate(rows):
            ax = axes[r][c]
            for metric in metrics:
                means = t[t.metric == metric].groupby("stage")["value"].mean()
                sign = -1 if metric == "delta_e_plus" else 1
                ax.plot(means.index, sign * means.to_numpy(), marker="o", ms=3,
                        label=("-" if sign < 0 else "") + metric)
                agg = table[(table.variant == variant) & (table.method == "all-layers") & (table.metric == metric)]
                ax.axhline(sign * float(agg["value"].mean()), lw=0.6, ls=":", color=ax.lines[-1].get_color())
            for name in points.get(variant, []):
                ax.axvline(points[variant][name] + 0.5, color="k", lw=0.6, ls="--")
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_title(f"{variant}" + (": vs shuffled maps" if r == 0 else ": shuffled maps as maps"), fontsize=7)
            ax.set_xlabel("layer (dashed: down-sampling after it; dotted: all-layers)", fontsize=6)
            ax.tick_params(labelsize=6)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=5)
    return save_figure(fig, out / "figures" / "flip_metrics.png", dpi=120, tight=True)


@runner("flip_metrics")
def run_flip_metrics(spec: dict, out: Path, quiet: bool) -> Outcome:
    """e-, e+, e_Delta, their shuffled baselines and delta versions per layer and model (see the module docs)."""
    from sanitas.experiments.runners import _images
    from sanitas.models import load_model
    from sanitas.utils.progress import log

    t0 = time.perf_counter()
    train_kwargs = {k: spec[k] for k in TRAIN_KEYS if k in spec}
    ds = _images(spec)
    parts, points, layer_sets = [], {}, {}
    for src in model_sources(spec):
        name = src.spec_string()
        with model_call(output=src.output):
            net = load_model(src, dataset_of(spec), quiet=quiet, **train_kwargs).eval()
            layers = spec_layers(spec, net)
            log(f"flip metrics on {name}: layers {', '.join(layers)}", quiet=quiet)
            t = model_table(name, net, ds.x, layers, n_shuffles=int(spec.get("n_shuffles", 5)),
                            seed=int(spec["seed"]))
        points[name] = {p: layers.index(p) + 1 for p in t.attrs["points"]}
        layer_sets[name] = layers
        parts.append(t)
    table = pd.concat(parts, ignore_index=True)
    scalars = scalars_of(table)
    figs = [_figure(table, points, out)]
    summary = (table.groupby(["variant", "method", "stage", "metric"], sort=False)["value"]
               .agg(["mean", "count"]).reset_index())
    return study_outcome(
        out, spec, t0, table, summary, figs,
        "sanitas: the three perturbation metrics and the down-sampling artefact (grabska2020 supplement F)",
        scalars=scalars, meta={"layers": layer_sets, "downsampling_points": {k: list(v) for k, v in points.items()}},
        text=("Per-layer saliency maps |a^{h,l}| (bilinear), their all-layer aggregate and the input gradient, "
              "scored by e-, e+, e_Delta, with shuffled maps of other images as the maps (e^xi) and as the "
              "reference (delta e). 'downsampling' rows: metric at the layer just before a down-sampling minus "
              "the layer before it at the same resolution."))
