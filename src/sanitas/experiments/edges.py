"""Saliency maps against edge detectors (adebayo2018 figure 1, section 5.4, figure 37).

adebayo2018 shows that an edge detector, which depends on neither model nor data, produces maps
"strikingly similar" to those of some saliency methods, and that "the methods that are most similar to
an edge detector, i.e., Guided Backprop and its variants, show minimal sensitivity to our randomization
tests" (figure 1); and that a method's map of an image and its map of the image multiplied element-wise
by its edge map look alike: "saliency methods mostly use the edges of the image" (section 5.4, figure 37).
The paper shows this visually; the check ``edge_detectors`` measures it on a trained model:

* variant ``vs sobel`` / ``vs canny`` (one stage each, in the order of ``detectors``): every metric of each
  method's map against the detector's map of the same image (:mod:`sanitas.explain.controls`);
* variant ``input x sobel`` (the last stage; ``edge_input: false`` leaves it out): each method's map of
  ``x`` against its map of ``x * e(x)``, with ``e`` the first detector's map scaled to [0, 1] per image.

The model explained is the trained one (stage 0, the original, is not a row: there is nothing to compare).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from sanitas.experiments.runner_base import study_outcome
from sanitas.experiments.runners import Outcome, _data, build_methods, model_call, runner

if TYPE_CHECKING:
    import torch

DETECTORS = ("sobel", "canny")


def _rows(method: str, variant: str, stage: int, values: dict, constant: torch.Tensor) -> pd.DataFrame:
    import torch

    n = len(constant)
    return pd.concat([pd.DataFrame({"method": method, "variant": variant, "stage": stage, "metric": metric,
                                    "image": range(n), "value": torch.as_tensor(v).double().numpy(),
                                    "constant_map": constant.numpy()}) for metric, v in values.items()],
                     ignore_index=True)


def edge_comparison(model, x: torch.Tensor, y: torch.Tensor, methods: dict, metrics: dict,
                    detectors=DETECTORS, edge_input: bool = True) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """The table described in the module docs, and the first image's maps (for the figure)."""
    import torch

    from sanitas.engine import as_image_batch, constant_maps, score
    from sanitas.explain import get_explainer

    edges = {d: get_explainer(d)(model, x, y).detach() for d in detectors}
    shown = {d: e[:1] for d, e in edges.items()}
    x_edges = None
    if edge_input:
        e = edges[detectors[0]].flatten(1)
        scale = e.amax(1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
        x_edges = x * (e / scale).reshape(x.shape)
        shown[f"input x {detectors[0]}"] = x_edges[:1]
    parts = []
    for name, explainer in methods.items():
        maps = explainer(model, x, y).detach()
        shown[name] = maps[:1]
        const = constant_maps(as_image_batch(maps)).cpu()
        for stage, (d, em) in enumerate(edges.items(), start=1):
            both = const | constant_maps(as_image_batch(em)).cpu()
            parts.append(_rows(name, f"vs {d}", stage, score(metrics, em, maps, x), both))
        if x_edges is not None:
            maps_e = explainer(model, x_edges, y).detach()
            both = const | constant_maps(as_image_batch(maps_e)).cpu()
            parts.append(_rows(name, f"input x {detectors[0]}", len(edges) + 1, score(metrics, maps, maps_e, x), both))
    return pd.concat(parts, ignore_index=True), shown


def _figure(x: torch.Tensor, shown: dict[str, torch.Tensor], path: Path) -> Path:
    from sanitas.report.figures import new_figure, save_figure

    panels = [("input", x[:1])] + list(shown.items())
    fig = new_figure(figsize=(1.6 * len(panels), 2.0))
    for ax, (name, m) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        img = m[0].detach().float().abs().sum(0).cpu().numpy() if name != "input" else m[0].mean(0).cpu().numpy()
        ax.imshow(img, cmap="gray")
        ax.set_title(name, fontsize=6)
        ax.axis("off")
    return save_figure(fig, path, dpi=120, tight=True)


@runner("edge_detectors")
def run_edge_detectors(spec: dict, out: Path, quiet: bool) -> Outcome:
    """Each method's map on the trained model against edge detectors' maps, and against its own map of the
    input times its edge map (see the module docs)."""
    from sanitas.checks.model_randomization import resolve_metrics
    from sanitas.utils.progress import log

    t0 = time.perf_counter()
    src, net, ds = _data(spec, quiet)
    detectors = list(spec.get("detectors", DETECTORS))
    metrics = resolve_metrics(spec.get("metrics", ["spearman_abs", "ssim"]))
    log(f"edge detectors {', '.join(detectors)} against {len(spec.get('methods') or [])} methods", quiet=quiet)
    with model_call(output=src.output):
        table, shown = edge_comparison(net, ds.x, ds.y, build_methods(spec.get("methods")), metrics, detectors,
                                       bool(spec.get("edge_input", True)))
    figs = [_figure(ds.x, shown, out / "figures" / "edges.png")]
    ok = table[~table["constant_map"]]
    summary = ok.groupby(["method", "variant", "metric"], sort=False)["value"].agg(["mean", "count"]).reset_index()
    scalars = {f"mean/{r['metric']}/{r['variant']}/{r['method']}": float(r["mean"]) for r in summary.to_dict("records")}
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: saliency maps against edge detectors", scalars=scalars,
        text=("Each method's map on the trained model against model-free edge maps of the same image (adebayo2018 "
              "figure 1), and against its own map of the image multiplied by its edge map (section 5.4, figure 37). "
              "The figure shows the first image: edge maps, then each method's map."))
