"""The input dominates input-times-noise products (adebayo2018 section 5.2, figure 19).

adebayo2018 keeps the input ``x`` fixed, draws two random vectors ``u``, ``v`` (truncated normal or uniform)
and compares ``x * u`` with ``x * v`` "as noise increases": "the input does indeed dominate the product",
and "the input dominance persists even as the noisy gradient vectors change drastically". The text does not
give figure 19's protocol; sanitas reads "as noise increases" as two gradient vectors that drift apart:
``u`` random and ``v = u + sigma * e`` with ``e`` random of the same distribution, for growing ``sigma``
(``sigma = 0``: the same vector; large ``sigma``: nearly independent vectors, where ``x * u`` vs ``x * v``
reaches the input-dominance null of the calibration, ``input_x_uniform`` / ``input_x_gaussian``).

The check ``input_noise`` needs no model. Rows: method ``input_x_<distribution>`` (``x * u`` vs ``x * v``)
and ``<distribution>`` (``u`` vs ``v``, the noise itself), one stage per noise level in increasing order
(variant ``noise 0.5``), ``samples`` random pairs per image (the ``draw`` column), every metric.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from sanitas.experiments.runner_base import study_outcome
from sanitas.experiments.runners import Outcome, _images, runner

if TYPE_CHECKING:
    import torch

NOISE = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
DISTRIBUTIONS = ("gaussian", "uniform")


def input_noise_table(x: torch.Tensor, metrics: dict, noise=NOISE, distributions=DISTRIBUTIONS, samples: int = 10,
                      seed: int = 0) -> pd.DataFrame:
    """The table described in the module docs."""
    import torch

    from sanitas.engine import score
    from sanitas.similarity.calibration import random_masks

    g = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    parts = []
    for dist in distributions:
        for stage, sigma in enumerate(sorted(float(s) for s in noise), start=1):
            for draw in range(samples):
                u = random_masks(x.shape, dist, g, x.dtype)
                v = u + sigma * random_masks(x.shape, dist, g, x.dtype)
                for method, (a, b) in ((f"input_x_{dist}", (x * u, x * v)), (dist, (u, v))):
                    for metric, values in score(metrics, a, b, x).items():
                        parts.append(pd.DataFrame({"method": method, "variant": f"noise {sigma:g}", "stage": stage,
                                                   "draw": draw, "metric": metric, "image": range(n),
                                                   "value": values.numpy(), "noise": sigma}))
    return pd.concat(parts, ignore_index=True)


def _figure(table: pd.DataFrame, path: Path) -> Path:
    from sanitas.report.figures import new_figure, save_figure

    metrics = list(dict.fromkeys(table["metric"]))
    fig = new_figure(figsize=(3.6 * len(metrics), 3.2))
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
        part = table[table["metric"] == metric]
        for method, rows in part.groupby("method", sort=False):
            m = rows.groupby("noise")["value"].mean()
            ax.plot(m.index, m.values, marker="o", ms=3, label=method.replace("input_x_", "x * "))
        ax.set_xscale("log")
        ax.set_xlabel("noise sigma (v = u + sigma e)")
        ax.set_title(metric, fontsize=9)
        ax.set_ylim(-0.1, 1.05)
        ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=110, tight=True)


@runner("input_noise")
def run_input_noise(spec: dict, out: Path, quiet: bool) -> Outcome:
    """x * u vs x * v as the noise between u and v grows (see the module docs)."""
    from sanitas.checks.model_randomization import resolve_metrics

    t0 = time.perf_counter()
    ds, seed = _images(spec), int(spec["seed"])
    metrics = resolve_metrics(spec.get("metrics", ["spearman_abs", "spearman", "ssim"]))
    table = input_noise_table(ds.x, metrics, spec.get("noise", NOISE), spec.get("distributions", DISTRIBUTIONS),
                              int(spec.get("samples", 10)), seed)
    figs = [_figure(table, out / "figures" / "input_noise.png")]
    summary = (table.groupby(["method", "metric", "noise"], sort=False)["value"].mean().unstack("noise").reset_index())
    summary.columns = [c if isinstance(c, str) else f"sigma {c:g}" for c in summary.columns]
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: x * u vs x * v as the noise grows",
        text=("Similarity of x * u and x * v (the input times two random 'gradients', v = u + sigma e) and of u and v "
              "themselves, as sigma grows (adebayo2018 section 5.2, figure 19)."))
