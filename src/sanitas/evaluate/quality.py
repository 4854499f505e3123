"""Explanation quality of several methods on one model: grabska2020's evaluation (sections 4-5).

>>> res = evaluate_methods(model, x, methods=["gradient", "fullgrad", "random"], layers="all",
...                        out="runs/quality")                                   # doctest: +SKIP
>>> res.summary(); res.layer_table(); res.best_aggregate                        # doctest: +SKIP

For every method the maps of all images are computed once (one batched call per method), turned
into one saliency value per pixel, and scored with the decision-flip metric
(:func:`sanitas.evaluate.perturbation_scores`): ``e_minus``, ``e_plus``, ``e_delta``, their
shuffled-noise baselines ``*_xi`` (maps of the same method for other images; the same pairing
for every method, so methods stay paired per image) and the delta versions (Eqs. 17-20,
supplement F). Methods are then compared per image with Wilcoxon signed-rank tests.

Saliency
    Maps are reduced to one value per pixel with ``channel_reduce="abs_sum"`` (default): the sum
    over channels of ``|map|``. This is grabska2020's gradient baseline ``sum_RGB |df/dx|`` and, for
    the layer maps below, ``|a|``. Pass ``channel_reduce="sum"`` to rank pixels by signed values.

Layer methods (``layers=`` or the method tokens ``"layers"`` / ``"aggregates"``)
    The *layers* of a model are its parameterized spatial layers whose output carries a bias,
    in forward order: every ``Conv2d`` with a bias and every ``BatchNorm2d`` (a ``Conv2d``
    without bias followed by BatchNorm, as in ResNets, is represented by the BatchNorm, whose
    output ``h^l = W h^{l-1} + b^l`` contains the bias, as in grabska2020's notation). A ResNet's
    shortcut BatchNorm is a layer too; it comes after the block's main path in forward order.
    :func:`layer_methods` names, for layer ``i`` (1-based):

    * ``activity[i]`` = ``activity(layers=[NAME])``: Psi(|a^{h,l}|), Eq. 11, bilinear upsampling;
    * ``bias[i]`` = ``bias(layers=[NAME])``: Psi(|a^{b,l}|), Eq. 12;
    * ``top-k`` = ``activity(layers=[...], aggregate=top-k)``: the top-down aggregate of Eq. 16
      over the last ``k`` layers (``k = 2..L``; ``top-1`` ranks pixels exactly as
      ``activity[L]`` and is not repeated), and ``all+input`` (all layers plus the input
      attributions, grabska2020's cyan curve). Psi rescales each layer's map to [0, 1] before the
      sum (Eq. 10), so the single-layer maps rank pixels as bilinearUpsample(|a|) does.

The best aggregate is the candidate (``activity[L]`` as the one-layer aggregate, every
``top-k``, ``all+input``) with the highest mean of ``select_metric`` (default ``delta_e_minus``,
the paper's Fig. 6 top); it is compared with the runner-up, FullGrad, the input gradient and the
best single layer by Wilcoxon tests (:meth:`QualityResult.comparison`).

Resuming
    With ``out`` each finished method is written to ``out/cells/`` (its rows, its first maps and
    the method's spec). A re-run with the same model, images and settings reuses the finished
    methods and computes only the missing ones; methods can be added to a finished run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from sanitas import engine
from sanitas.errors import ConfigError, InputError
from sanitas.evaluate.perturbation import FLIP_METRICS, REMOVAL_ORDERS, perturbation_scores, reduce_map
from sanitas.evaluate.quality_methods import MethodSpec, expand_methods, layer_methods, spatial_layers
from sanitas.evaluate.quality_result import QualityResult
from sanitas.evaluate.stats import pairwise_wilcoxon
from sanitas.explain import Explainer, get_explainer
from sanitas.explain._core import check_image_batch, eval_mode, logits_of, model_device, resolve_target
from sanitas.utils.hashing import model_fingerprint, tensor_digest
from sanitas.utils.io import atomic_write_table
from sanitas.utils.progress import progress

__all__ = ["evaluate_methods", "layer_methods", "spatial_layers", "expand_methods", "QualityResult", "MethodSpec"]

#: metrics tested pairwise by default (the paper's main metrics and the recommended delta_e_delta)
STATS_METRICS = ("delta_e_minus", "e_minus", "delta_e_plus", "delta_e_delta")


def _resolve_target(target, model, x, y):
    """Class indices (N,): ``"predicted"``, ``"label"`` (the labels ``y``) or explicit indices, checked by
    :func:`sanitas.explain._core.resolve_target` (count, dtype, range)."""
    if isinstance(target, str) and target not in ("predicted", "label"):
        raise ConfigError(f"unknown target {target!r}: use 'predicted' (the model's class, default), 'label' or "
                          "a tensor of class indices")
    if isinstance(target, str) and target == "label":
        if y is None:
            raise InputError("target='label' needs the labels y")
        target = y
    with eval_mode(model), torch.no_grad():
        logits = logits_of(model, x)
    return resolve_target(target, logits)


def _maps(explainer, model, x, target, batch_size: int) -> torch.Tensor:
    if len(x) <= batch_size:
        return explainer(model, x, target).detach()
    return torch.cat([explainer(model, x[i:i + batch_size], target[i:i + batch_size]).detach()
                      for i in range(0, len(x), batch_size)])


def evaluate_methods(model: nn.Module, x: torch.Tensor, y=None, methods: Any = ("gradient", "fullgrad", "random"),
                     *, layers: str | Sequence[str] | None = None, target: Any = "predicted",
                     orders: Sequence[str] = REMOVAL_ORDERS, removal: Any = "zero", n_shuffles: int = 10, seed: int = 0,
                     channel_reduce: str = "abs_sum", interpolation: str = "bilinear", search: str = "multilevel",
                     levels_per_round: int | None = None, batch_size: int = 256,
                     stats_metrics: Sequence[str] = STATS_METRICS, select_metric: str = "delta_e_minus",
                     test_method: str = "auto",
                     out: str | Path | None = None, resume: bool = True, figures: bool = True, show: int = 8,
                     quiet: bool | None = None) -> QualityResult:
    """Evaluate saliency methods on ``model`` with the decision-flip metric; see the module docstring.

    ``methods``: names (with options, e.g. ``activity(layer=conv1)``, ``competitive(gradient)``),
    Explainers, callables ``f(model, x, target)``, ``(label, method)`` pairs or a dict
    ``{label: method}``; tokens ``"layers"`` / ``"aggregates"``. ``layers``: ``"all"`` or layer
    names, adds per-layer activity / bias maps and the top-down aggregates. ``target``:
    ``"predicted"``, ``"label"`` (uses ``y``) or class indices. ``orders``, ``removal``,
    ``n_shuffles``, ``seed``, ``search``, ``levels_per_round``, ``batch_size``: as in
    :func:`sanitas.evaluate.perturbation_scores`. ``stats_metrics``: metrics tested pairwise;
    ``test_method``: scipy's wilcoxon ``method`` (``"auto"``: exact for small samples without
    ties, else the normal approximation; ``"asymptotic"`` is much faster for a few images with ties).
    ``out``: write ``results.parquet/csv``, ``meta.json``, ``wilcoxon.csv``, ``summary.csv``,
    ``figures/*.png`` and ``report.html`` there, and resume finished methods (``resume=False``
    recomputes everything).
    """
    t0 = time.perf_counter()
    check_image_batch(x)
    if len(x) < 2 and n_shuffles > 0:
        raise InputError("the shuffled-map baseline needs at least 2 images (xi come from other images)")
    if select_metric not in FLIP_METRICS:
        raise ConfigError(f"unknown select_metric {select_metric!r}: use one of {list(FLIP_METRICS)}")
    unknown = [m for m in stats_metrics if m not in FLIP_METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown} in stats_metrics; metrics: {list(FLIP_METRICS)}")
    dev = model_device(model)
    x = x.detach().to(dev)
    tgt = _resolve_target(target, model, x, y)
    specs = expand_methods(methods, model, x, layers, interpolation)
    explainers: dict[str, Explainer] = {}
    for s in specs:  # build every method first: a bad name fails before any work
        explainers[s.label] = get_explainer(s.method)
    config = {"check": "quality", "orders": list(orders), "removal": removal if isinstance(removal, str) else
              repr(removal), "n_shuffles": n_shuffles, "seed": seed, "channel_reduce": channel_reduce,
              "search": search, "levels_per_round": levels_per_round,
              "target": target if isinstance(target, str) else "explicit", "targets_digest": tensor_digest(tgt),
              "n_images": int(len(x)), "images_digest": tensor_digest(x), "model": model_fingerprint(model)}
    with engine.CellStore(out, config, resume=resume) as store:  # holds the directory's lock until done
        frames, shown, timings, cells = [], {}, {}, {}
        for s in progress(specs, desc="methods", quiet=quiet):
            cached = store.load("000", s.label)
            if cached is not None and cached[2].get("spec") == s.spec() and cached[2].get("label") == s.label:
                rows, maps, extra = cached
                if "values" in extra:  # exact floats (the JSON copy of the rows rounds them)
                    rows["value"] = np.asarray(extra.pop("values"), dtype=float)
                frames.append(rows)
                shown[s.label] = maps
                cells[s.label] = {**extra, "resumed": True}
                continue
            t = time.perf_counter()
            maps = _maps(explainers[s.label], model, x, tgt, batch_size)
            sal = reduce_map(maps, channel_reduce).detach()
            t_explain = time.perf_counter() - t
            t = time.perf_counter()
            df = perturbation_scores(model, x, sal, n_shuffles=n_shuffles, seed=seed, orders=orders, removal=removal,
                                     batch_size=batch_size, levels_per_round=levels_per_round, search=search,
                                     channel_reduce="sum", quiet=quiet)
            t_score = time.perf_counter() - t
            info = df.attrs["sanitas"]
            n = len(df)
            rows = pd.DataFrame({"method": [s.label] * n, "variant": "original", "stage": 0,
                                 "metric": df["metric"].to_numpy(), "image": df["image"].to_numpy(),
                                 "value": df["value"].to_numpy(dtype=float),
                                 "target": tgt.cpu().numpy()[df["image"].to_numpy()],
                                 "family": s.family, "layer": s.layer, "layer_index": s.layer_index})
            extra = {"spec": s.spec(), "label": s.label, "explain_s": t_explain, "score_s": t_score,
                     "n_evaluated": info["n_evaluated"], "nonmonotone_fraction": info["nonmonotone_fraction"]}
            keep = sal[:show].cpu()
            store.save("000", s.label, rows, keep, {**extra, "values": rows["value"].to_numpy()})
            frames.append(rows)
            shown[s.label] = keep
            cells[s.label] = {**extra, "resumed": False}
        table = pd.concat(frames, ignore_index=True)
        timings["methods"] = {k: {kk: v[kk] for kk in ("explain_s", "score_s") if kk in v} for k, v in cells.items()}
        t = time.perf_counter()
        stats_m = [m for m in stats_metrics if m in set(table.metric)]
        if len(specs) >= 2 and stats_m:
            wil = pairwise_wilcoxon(table[["method", "image", "metric", "value"]], metric=stats_m,
                                    methods=[s.label for s in specs], test_method=test_method)
        else:
            wil = pd.DataFrame()
        timings["statistics_s"] = time.perf_counter() - t
        meta = {"config": config, "methods": [{"label": s.label, "spec": s.spec(), "family": s.family,
                                               "layer": s.layer, "layer_index": s.layer_index} for s in specs],
                "cells": cells, "versions": engine.versions(), "timings": timings, "seed": seed,
                "select_metric": select_metric, "n_images": int(len(x))}
        res = QualityResult(table, specs, wil, meta, shown, x[:show].cpu(), Path(out) if out else None,
                            select_metric=select_metric)
        meta["best_aggregate"] = res.best_aggregate
        if out:
            out_dir = Path(out)
            if figures:
                t = time.perf_counter()
                from sanitas.report.quality_figures import quality_figures

                res.figures = quality_figures(res, out_dir / "figures")
                timings["figures_s"] = time.perf_counter() - t
            timings["total_s"] = time.perf_counter() - t0
            engine.write_outputs(out_dir, table, meta)
            if not wil.empty:
                atomic_write_table(out_dir / "wilcoxon.csv", wil)
            atomic_write_table(out_dir / "summary.csv", res.summary())
            lt = res.layer_table()
            if not lt.empty:
                atomic_write_table(out_dir / "layers.csv", lt)
            from sanitas.report.html import quality_report

            res.report = quality_report(res, out_dir)
        else:
            timings["total_s"] = time.perf_counter() - t0
    return res
