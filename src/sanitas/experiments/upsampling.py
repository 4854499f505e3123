"""Bilinear against "linear" up-sampling of layer maps (grabska2020 supplement E, figure 12; supplement D).

Layer attributions ``a^{h,l}`` of a layer smaller than the input are up-sampled to the input's size before
they rank pixels (Eq. 10 of the supplement: ``s^{h,l} <- bilinearUpsample(a^{h,l})``). Supplement D: "The
linear scaling is more prone to artefacts and yields higher variance"; supplement E ("Choose bilinear over
linear up-sampling"), figure 12 (figure 5, activity against bias maps per layer, with a linear resize):
"The effect size of delta e_- is 2x smaller, all methods appear less discriminative than the simple gradient
approach. However, the difference between a^{h,l}- and a^{b,l}-derived explanations is still highly
significant". The paper does not define its "linear" resize of a 2-d map; its description (more artefacts,
higher variance, against the smooth bilinear one) fits block (nearest-neighbour) up-sampling, the other
resize the layer methods offer (``interpolation=nearest``), which sanitas compares here.

The check ``upsampling``: for every bias-carrying spatial layer whose output is smaller than the input (the
layers of :func:`sanitas.evaluate.spatial_layers`, numbered as there; a full-size layer is not resized),
``activity[i]`` and ``bias[i]`` (Psi(|a|), Eqs. 9-12), the activity aggregate over all layers (Eq. 16,
``activity (all layers)``) and FullGrad (``fullgrad: false`` leaves it out), each up-sampled bilinearly
(variant ``bilinear``, stage 1) and with the resize ``against`` (default ``nearest``, stage 2), and the input gradient
(variant ``input resolution``, stage 1), scored with the decision-flip metric on the predicted class (least
salient pixels first, zero removal, ``n_shuffles`` maps of other images as the noise baseline: ``e_minus``,
``e_minus_xi``, ``delta_e_minus``; :func:`sanitas.evaluate.perturbation_scores`, the same pairing for every map).
``activity (layer mean)`` and ``bias (layer mean)`` are the per-image means over the resized layers.
Claims compare variants per image: a ``sub`` of two measures shares the bootstrap's image draws.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from sanitas.experiments.runner_base import Outcome, study_outcome, _data, model_call, runner

if TYPE_CHECKING:
    import torch
    from torch import nn

INTERPOLATIONS = ("bilinear", "nearest")
METRICS = ("e_minus", "e_minus_xi", "delta_e_minus")
INPUT = "input resolution"


def resized_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[int, str]]:
    """``(index, name)`` of the layers of :func:`sanitas.evaluate.spatial_layers` (1-based index) whose output
    is spatially smaller than ``x``."""
    import torch
    from torch import nn

    from sanitas.evaluate.quality_methods import spatial_layers
    from sanitas.explain._core import eval_mode
    from sanitas.explain.capture import capture

    names = spatial_layers(model, x)
    with eval_mode(model), torch.no_grad():
        _, seen = capture(model, x[:1], names, (nn.Conv2d, nn.BatchNorm2d))
    size = {n: tuple(out.shape[2:]) for n, _, out in seen}
    return [(i, n) for i, n in enumerate(names, 1) if size.get(n, tuple(x.shape[2:])) != tuple(x.shape[2:])]


def _method_specs(model, x, interpolations, fullgrad: bool = True) -> list[tuple[str, str, str]]:
    """``(label, variant, method spec)`` of every map scored."""
    from sanitas.explain.registry import parse_value

    from sanitas.evaluate.quality_methods import spatial_layers

    quote = lambda n: n if parse_value(n) == n else f"'{n}'"  # noqa: E731  (nn.Sequential names are numbers)
    layers = resized_layers(model, x)
    joined = ", ".join(quote(n) for n in spatial_layers(model, x))
    specs = [("gradient", INPUT, "gradient")]
    for interp in interpolations:
        for i, n in layers:
            specs.append((f"activity[{i}]", interp, f"activity(layers=[{quote(n)}], interpolation={interp})"))
            specs.append((f"bias[{i}]", interp, f"bias(layers=[{quote(n)}], interpolation={interp})"))
        specs.append(("activity (all layers)", interp, f"activity(layers=[{joined}], aggregate=all, "
                                                       f"interpolation={interp})"))
        if fullgrad:
            specs.append(("fullgrad", interp, f"fullgrad(interpolation={interp})"))
    return specs


def upsampling_table(model: nn.Module, x: torch.Tensor, interpolations=INTERPOLATIONS, n_shuffles: int = 5,
                     seed: int = 0, quiet: bool = True,
                     fullgrad: bool = True) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """The table of the module docs, and the first image's maps (for the figure)."""
    from sanitas.engine import as_image_batch, constant_maps
    from sanitas.errors import NotApplicableError
    from sanitas.evaluate import perturbation_scores
    from sanitas.explain import get_explainer
    from sanitas.utils.forward import inference_logits

    target = inference_logits(model, x).argmax(1)
    specs = _method_specs(model, x, interpolations, fullgrad)
    maps, const, kept = {}, {}, []
    for label, variant, method in specs:
        try:
            m = get_explainer(method)(model, x, target).detach()
        except NotApplicableError:
            continue
        key = f"{label} | {variant}"
        maps[key], const[key] = m, constant_maps(as_image_batch(m)).cpu().numpy()
        kept.append((label, variant, key))
    scores = perturbation_scores(model, x, maps, n_shuffles=n_shuffles, seed=seed, orders=("-s",),
                                 channel_reduce="abs_sum", quiet=quiet)
    scores = scores[scores["metric"].isin(METRICS)]
    stage = {INPUT: 1, **{v: i for i, v in enumerate(interpolations, 1)}}
    parts = []
    for label, variant, key in kept:
        part = scores[scores["method"] == key].copy()
        part["method"], part["variant"], part["stage"] = label, variant, stage[variant]
        part["constant_map"] = const[key][part["image"].to_numpy()]
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)[["method", "variant", "stage", "metric", "image", "value",
                                                 "constant_map"]]
    for family in ("activity", "bias"):
        rows = table[table["method"].str.match(rf"^{family}\[\d+\]$") & ~table["constant_map"]]
        if len(rows):
            mean = rows.groupby(["variant", "stage", "metric", "image"], as_index=False)["value"].mean()
            mean["method"], mean["constant_map"] = f"{family} (layer mean)", False
            table = pd.concat([table, mean[table.columns]], ignore_index=True)
    shown = {key: m[:1] for key, m in maps.items()}
    return table, shown


def _figure(table: pd.DataFrame, x, shown: dict, interpolations, path: Path) -> Path:
    import numpy as np

    from sanitas.report.figures import new_figure, save_figure

    d = table[table["metric"] == "delta_e_minus"]
    labels = [m for m in dict.fromkeys(d["method"]) if m != "gradient"]
    keys = [k for k in shown if not k.startswith("gradient")][:8]
    panels = [("input", x[:1])] + [(k, shown[k]) for k in keys]
    fig = new_figure(figsize=(max(6.0, 1.1 * len(panels)), 5.2))
    grid = fig.add_gridspec(2, len(panels), height_ratios=[2.6, 1.0])
    top = fig.add_subplot(grid[0, :])
    width = 0.8 / len(interpolations)
    for j, interp in enumerate(interpolations):
        part = d[d["variant"] == interp]
        vals = [part[part["method"] == m]["value"].dropna().to_numpy() for m in labels]
        pos = np.arange(len(labels)) + (j - (len(interpolations) - 1) / 2) * width
        bp = top.boxplot(vals, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
        for box in bp["boxes"]:
            box.set_facecolor(f"C{j}")
        top.plot([], [], color=f"C{j}", lw=6, label=interp)
    g = d[d["method"] == "gradient"]["value"].mean()
    top.axhline(g, color="gray", ls="--", lw=1, label="gradient (mean)")
    top.axhline(0, color="black", lw=0.5)
    top.set_xticks(np.arange(len(labels)), labels, fontsize=6)
    top.set_ylabel("delta e- (higher is better)")
    top.legend(fontsize=6)
    top.set_title("grabska2020 supplement E: layer maps up-sampled bilinearly or by blocks", fontsize=9)
    for i, (name, m) in enumerate(panels):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(m[0].abs().sum(0).cpu().numpy(), cmap="gray")
        ax.set_title(name.replace(" | ", "\n"), fontsize=5)
        ax.axis("off")
    return save_figure(fig, path, dpi=120, tight=True)


@runner("upsampling")
def run_upsampling(spec: dict, out: Path, quiet: bool) -> Outcome:
    """Supplement E: layer maps up-sampled with each interpolation, scored with delta e- (see the module docs)."""

    t0 = time.perf_counter()
    src, net, ds = _data(spec, quiet)
    interps = ("bilinear", spec.get("against", "nearest"))
    with model_call(output=src.output):
        table, shown = upsampling_table(net, ds.x, interps, int(spec.get("n_shuffles", 5)), int(spec["seed"]),
                                        quiet, bool(spec.get("fullgrad", True)))
    figs = [_figure(table, ds.x, shown, interps, out / "figures" / "upsampling.png")]
    ok = table[~table["constant_map"]]
    summary = ok.groupby(["method", "variant", "metric"], sort=False)["value"].agg(["mean", "count"]).reset_index()
    scalars = {f"mean/{r['metric']}/{r['variant']}/{r['method']}": float(r["mean"])
               for r in summary.to_dict("records")}
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: bilinear or block up-sampling of layer maps (grabska2020 supplement E)",
        scalars=scalars,
        text=("delta e- (Eq. 20) of activity and bias maps of the layers smaller than the input, of the aggregate over "
              "all layers and of FullGrad, up-sampled bilinearly or by blocks (nearest), with the input gradient for "
              "reference. The figure: delta e- per method and interpolation, then the first image's maps."))
