"""Spearman's rho rises as two maps share more zeros (sundararajan2019, section 3.1, figure 1).

Two positive random vectors of size ``n`` (uniform on (0, 1]) share ``k`` indices where both are zero;
their Spearman correlation (average ranks, ties averaged) rises from ~0 at ``k = 0`` towards 1 as ``k``
grows: the tied zeros form one block of equal low ranks in both vectors. For a fraction ``p = k / n`` of
shared zeros and large ``n`` it is ``3 p (1 - p) / (3 p (1 - p)^2 + (1 - p)^3 + 3 p^2 (1 - p))``, i.e.
``3p / (1 + p + p^2)``: 0.857 at ``p = 0.5`` (the note: "more than 0.8" at 50%), 0.999 at ``p = 0.95``.

Integrated gradients with a black baseline is exactly zero on the black pixels of the image, in the trained
and in any randomized network alike, so the maps of a trained and a randomized network share the image's
black pixels: the note's explanation of the high ``spearman_abs`` adebayo2018 measured.

The experiment (check ``shared_zeros``) computes

* the curve: for each fraction of ``fractions``, ``samples`` pairs of random positive vectors of the
  size of one input (784 for Fashion-MNIST) with that fraction of shared zeros; rows of method
  ``random_positive``, metric ``spearman``, one stage per fraction (variant ``shared 0.50``), the pair as
  ``image`` (claims: ``{method: random_positive, metric: spearman, stages: last}``);
* the measured points: the model's maps under cascading randomization (the ``model_randomization`` check,
  stored under ``maps/``), per image its ``spearman_abs`` per stage, its fraction of pixels equal to the
  baseline (metric ``shared_zero_fraction``, at stage 0) and the curve at that fraction computed for this
  image (metric ``shared_zero_null``: random positive maps sharing exactly the image's black pixels, at
  stage 0), so that claims compare measured and null image by image.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sanitas.experiments.runner_base import study_outcome
from sanitas.experiments.runners import Outcome, _data, build_methods, model_call, runner

if TYPE_CHECKING:
    import torch

CURVE_METHOD = "random_positive"
#: the default fractions of shared zeros: 0, 0.05, ..., 0.95 (all zeros would be two constant maps)
FRACTIONS = tuple(round(0.05 * i, 2) for i in range(20))


def shared_zero_spearman(size: int, zeros: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """Spearman's rho of ``samples`` pairs of positive random vectors of ``size`` elements that are both
    zero on the same ``zeros`` indices (the first ones: rho does not depend on where they are)."""
    import torch

    from sanitas.similarity.spearman import spearman_rows

    if not 0 <= zeros < size:
        raise ValueError(f"zeros must be in [0, size), got {zeros} of {size}")
    a = 1.0 - torch.rand(2, samples, size, generator=generator, dtype=torch.float64)  # (0, 1]: positive
    a[:, :, :zeros] = 0.0
    return spearman_rows(a[0], a[1])


def curve_rows(size: int, fractions, samples: int, seed: int) -> pd.DataFrame:
    """The curve's table: one stage per fraction (from 1, in the given order), one row per random pair."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    parts = []
    for stage, f in enumerate(fractions, start=1):
        rho = shared_zero_spearman(size, int(round(f * size)), samples, g).numpy()
        parts.append(pd.DataFrame({"method": CURVE_METHOD, "variant": f"shared {f:.2f}", "stage": stage,
                                   "metric": "spearman", "image": np.arange(samples), "value": rho,
                                   "fraction": f}))
    return pd.concat(parts, ignore_index=True)


def image_nulls(x: torch.Tensor, baseline: float, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the fraction of its elements equal to ``baseline`` (integrated gradients is zero there on
    every network) and the mean rho of ``samples`` random positive map pairs sharing exactly that many zeros."""
    import torch

    g = torch.Generator().manual_seed(int(seed) + 1)
    flat = x.reshape(x.shape[0], -1)
    zeros = (flat == baseline).sum(1).tolist()
    size = flat.shape[1]
    frac = np.array([z / size for z in zeros])
    null = np.array([float(shared_zero_spearman(size, min(z, size - 1), samples, g).nanmean()) for z in zeros])
    return frac, null


def _figure(curve: pd.DataFrame, points: pd.DataFrame, path: Path) -> Path:
    from sanitas.report.figures import new_figure, save_figure

    g = curve.groupby("fraction")["value"]
    mean, lo, hi = g.mean(), g.quantile(0.025), g.quantile(0.975)
    fig = new_figure(figsize=(6, 4.2))
    ax = fig.subplots()
    ax.fill_between(mean.index, lo, hi, alpha=0.25, color="C0", label="95% of random pairs")
    ax.plot(mean.index, mean.values, color="C0", label="random positive maps (sundararajan2019 fig. 1)")
    for i, (name, part) in enumerate(points.groupby("variant", sort=False)):
        ax.scatter(part["fraction"], part["value"], s=12, alpha=0.7, color=f"C{i + 1}", label=f"measured: {name}")
    ax.set_xlabel("fraction of elements where both maps are zero")
    ax.set_ylabel("Spearman rank correlation")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path, dpi=110, tight=True)


@runner("shared_zeros")
def run_shared_zeros(spec: dict, out: Path, quiet: bool) -> Outcome:
    """The shared-zeros curve with the model's measured points (see the module docs)."""
    from sanitas.checks import model_randomization

    t0 = time.perf_counter()
    seed = int(spec["seed"])
    samples = int(spec.get("samples", 50))
    fractions = [float(f) for f in spec.get("fractions", FRACTIONS)]
    src, net, ds = _data(spec, quiet, "model parameter randomization")
    size = int(ds.x[0].numel())
    curve = curve_rows(size, fractions, samples, seed)
    methods = spec.get("methods", ["integrated_gradients"])
    with model_call(output=src.output):
        res = model_randomization(net, ds.x, ds.y, methods=build_methods(methods), metrics=["spearman_abs"], seed=seed,
                                  out=out / "maps", resume=True, quiet=quiet, init=spec.get("init", "truncated_normal"),
                                  draws=int(spec.get("draws", 1)), calibrate=False)
    from sanitas.experiments.runners import _check_outcome

    _check_outcome(res, out / "maps", t0)   # the randomization's own figures and report, under maps/
    measured = res.table.copy()
    frac, null = image_nulls(ds.x, float(spec.get("baseline", 0.0)), samples, seed)
    extra = []
    for method in dict.fromkeys(measured["method"]):
        for metric, values in (("shared_zero_fraction", frac), ("shared_zero_null", null)):
            extra.append(pd.DataFrame({"method": method, "variant": "original", "stage": 0, "metric": metric,
                                       "image": np.arange(len(values)), "value": values}))
    table = pd.concat([curve, measured, *extra], ignore_index=True)
    for c in ("constant_map", "degenerate_map"):   # the curve's and the nulls' rows are no maps of the model
        if c in table:
            table[c] = table[c].astype("boolean").fillna(False).astype(bool)
    # the figure: each randomized stage's points at their image's shared-zero fraction
    pts = measured[(measured["stage"] > 0) & (measured["metric"] == "spearman_abs")].copy()
    pts["fraction"] = frac[pts["image"].to_numpy()]
    pts["variant"] = pts["method"] + " " + pts["variant"]
    first_last = pts[pts["stage"].isin([pts["stage"].min(), pts["stage"].max()])]
    figs = [_figure(curve, first_last, out / "figures" / "shared_zeros.png")]
    g = curve.groupby("fraction")["value"].mean()
    mean_frac = float(frac.mean())
    scalars = {"mean_shared_zero_fraction": mean_frac,
               "curve_at_mean_fraction": float(np.interp(mean_frac, g.index.to_numpy(), g.to_numpy())),
               "curve_min_step": float(np.diff(g.to_numpy()).min()) if len(g) > 1 else float("nan")}
    summary = pd.concat([
        pd.DataFrame({"what": "curve", "fraction": g.index, "spearman": g.to_numpy()}),
        pts.groupby(["variant"], sort=False).agg(fraction=("fraction", "mean"), spearman=("value", "mean"))
        .reset_index().rename(columns={"variant": "what"}),
        pd.DataFrame({"what": ["null at the images' zeros"], "fraction": [mean_frac], "spearman": [float(null.mean())]}),
    ], ignore_index=True)
    return study_outcome(
        out, spec, t0, table, summary, figs, "sanitas: Spearman's rho and shared zeros",
        scalars=scalars, meta={"size": size, "samples": samples},
        text=("Spearman correlation of two positive random maps of one input's size as the fraction of elements "
              "where both are zero grows (sundararajan2019 figure 1), with the measured spearman_abs of the model's "
              "maps under cascading randomization at each image's fraction of baseline pixels (first and last "
              "randomized stage). The model's randomization report: maps/report.html."))
