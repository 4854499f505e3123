"""Explanation quality of several methods on one model: grabska2020's evaluation (sections 4-5).

>>> res = evaluate_quality(model, x, methods=["gradient", "fullgrad", "random"], layers="all",
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

One feature, one name: the check :class:`Quality` (``check: quality`` in a config, ``sanitas quality`` on
the command line, :func:`evaluate_quality` in Python; ``evaluate_methods``, ``sanitas evaluate`` and
``check: evaluate`` are its older names and still work).

Cells and resuming
    A check of :mod:`sanitas.checks.base`: one variant (the model itself), one cell per method, run by
    :func:`sanitas.engine.run` like every check's: the method explains the images once and the cell scores
    its maps with the decision-flip metric (``extra_scores``). With ``out`` each finished method is written to
    ``out/cells/``; a re-run with the same model, images and settings reuses the finished methods and
    computes only the missing ones; methods can be added to a finished run (the list of methods is not part
    of the run's identity; a cell whose name now means another method is recomputed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sanitas import engine
from sanitas.checks.base import Check
from sanitas.errors import ConfigError, InputError
from sanitas.evaluate.perturbation import FLIP_METRICS, REMOVAL_ORDERS, perturbation_scores, reduce_map
from sanitas.evaluate.quality_methods import MethodSpec, expand_methods, layer_methods, spatial_layers
from sanitas.evaluate.quality_result import QualityResult
from sanitas.evaluate.stats import pairwise_wilcoxon
from sanitas.experiments.schema import _count, _one_of, _string, _texts
from sanitas.explain import get_explainer
from sanitas.explain._core import check_image_batch, eval_mode, logits_of, model_device, resolve_target
from sanitas.utils.hashing import tensor_digest
from sanitas.utils.io import atomic_write_table

__all__ = ["Quality", "evaluate_quality", "evaluate_methods", "layer_methods", "spatial_layers", "expand_methods",
           "QualityResult", "MethodSpec"]

#: metrics tested pairwise by default (the paper's main metrics and the recommended delta_e_delta)
STATS_METRICS = ("delta_e_minus", "e_minus", "delta_e_plus", "delta_e_delta")
#: the columns of the quality table (one row per method, image and metric)
COLUMNS = ["method", "variant", "stage", "metric", "image", "value", "target", "family", "layer", "layer_index"]


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


class Quality(Check):
    """grabska2020's decision-flip evaluation of several methods on one model (see the module docs and
    :func:`evaluate_quality` for the options)."""

    name = "quality"
    options = {"layers": _texts, "target": _one_of("predicted", "label"), "orders": _texts, "removal": _string,
               "n_shuffles": _count(minimum=0), "channel_reduce": _string, "interpolation": _string,
               "search": _string, "select_metric": _string, "test_method": _string}
    default_metrics = ()
    calibrates = False
    methods_in_config = False
    reading = ("Each number is how much of the image must be removed, in the order a method's map gives, before the "
               "model changes its decision (e_minus: least salient first, higher is better; e_plus: most salient "
               "first, lower is better), and the same against the method's maps of other images (delta_e_*: a "
               "method must beat its own shuffled maps).")

    def __init__(self, model, x, y=None, *, methods: Any = ("gradient", "fullgrad", "random"),
                 layers: str | Sequence[str] | None = None, target: Any = "predicted",
                 orders: Sequence[str] = REMOVAL_ORDERS, removal: Any = "zero", n_shuffles: int = 10,
                 channel_reduce: str = "abs_sum", interpolation: str = "bilinear", search: str = "multilevel",
                 levels_per_round: int | None = None, batch_size: int = 256,
                 stats_metrics: Sequence[str] = STATS_METRICS, select_metric: str = "delta_e_minus",
                 test_method: str = "auto", figures: bool = True, **common):
        super().__init__(model, x, y, methods=methods, target=target, **common)
        self.layers, self.orders, self.removal, self.n_shuffles = layers, list(orders), removal, n_shuffles
        self.channel_reduce, self.interpolation, self.search = channel_reduce, interpolation, search
        self.levels_per_round, self.batch_size, self.test_method = levels_per_round, batch_size, test_method
        self.stats_metrics, self.select_metric, self.figures = list(stats_metrics), select_metric, figures
        self.cell_info: dict[str, dict] = {}

    def prepare(self) -> None:
        x = self.x
        check_image_batch(x)
        if len(x) < 2 and self.n_shuffles > 0:
            raise InputError("the shuffled-map baseline needs at least 2 images (xi come from other images)")
        if self.select_metric not in FLIP_METRICS:
            raise ConfigError(f"unknown select_metric {self.select_metric!r}: use one of {list(FLIP_METRICS)}")
        unknown = [m for m in self.stats_metrics if m not in FLIP_METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {unknown} in stats_metrics; metrics: {list(FLIP_METRICS)}")
        self.x = x = x.detach().to(model_device(self.model))
        self.tgt = _resolve_target(self.target, self.model, x, self.y)
        self.y = self.tgt if self.y is None else torch.as_tensor(self.y).to(x.device)
        self.specs = expand_methods(self.methods, self.model, x, self.layers, self.interpolation)
        self.explainers = {s.label: get_explainer(s.method) for s in self.specs}  # a bad name fails before any work
        self.sims = {}
        self.extra_scores = self._flip_scores

    def _flip_scores(self, variant, method, reference, maps) -> dict[str, torch.Tensor]:
        """A cell's scores: the decision-flip metrics of the method's maps (one value per image and metric)."""
        sal = reduce_map(maps, self.channel_reduce).detach()
        df = perturbation_scores(self.model, self.x, sal, n_shuffles=self.n_shuffles, seed=self.seed,
                                 orders=self.orders, removal=self.removal, batch_size=self.batch_size,
                                 levels_per_round=self.levels_per_round, search=self.search, channel_reduce="sum",
                                 quiet=self.quiet)
        info = df.attrs["sanitas"]
        self.cell_info[method] = {"n_evaluated": info["n_evaluated"],
                                  "nonmonotone_fraction": info["nonmonotone_fraction"]}
        n = len(self.x)
        out = {}
        for metric, g in df.groupby("metric", sort=False):
            values = torch.full((n,), float("nan"), dtype=torch.float64)
            values[torch.tensor(g["image"].to_numpy())] = torch.tensor(g["value"].to_numpy(dtype=float))
            out[metric] = values
        return out

    def targets(self):
        return self.tgt, (lambda v: self.tgt)

    def variants(self):
        yield engine.Variant("original", 0, self.model)

    def total(self) -> int:
        return 1

    def config(self) -> dict:
        return {"orders": self.orders, "removal": self.removal if isinstance(self.removal, str) else repr(self.removal),
                "n_shuffles": self.n_shuffles, "channel_reduce": self.channel_reduce, "search": self.search,
                "levels_per_round": self.levels_per_round,
                "target": self.target if isinstance(self.target, str) else "explicit",
                "targets_digest": tensor_digest(self.tgt)}

    def shape_table(self, table: pd.DataFrame) -> pd.DataFrame:
        if not len(table):
            return pd.DataFrame(columns=COLUMNS)
        by = {s.label: s for s in self.specs}
        table = table.assign(family=[by[m].family for m in table["method"]],
                             layer=[by[m].layer for m in table["method"]],
                             layer_index=[by[m].layer_index for m in table["method"]])
        return table[COLUMNS]

    def meta(self, meta: dict) -> dict:
        timings = meta["timings"]
        cells = {}
        for s in self.specs:
            explain = timings.get(f"explain/{s.label}/reference")
            score = timings.get(f"score/{s.label}/000")
            cells[s.label] = {"spec": s.spec(), "label": s.label, "resumed": score is None,
                              **({"explain_s": explain, "score_s": score} if score is not None else {}),
                              **self.cell_info.get(s.label, {})}
        return {"methods": [{"label": s.label, "spec": s.spec(), "family": s.family, "layer": s.layer,
                             "layer_index": s.layer_index} for s in self.specs],
                "cells": cells, "select_metric": self.select_metric, "n_images": int(len(self.x))}

    def finish(self, result) -> None:
        pass

    def draw(self, result) -> None:
        pass  # run() draws the quality figures and report, from the QualityResult

    def run(self) -> QualityResult:
        """The check's cells through :func:`sanitas.engine.run`, then the pairwise tests, figures and report."""
        t0 = time.perf_counter()
        res = super().run()
        table, meta = res.table, res.meta
        t = time.perf_counter()
        labels = [s.label for s in self.specs if s.label not in meta["refused"]]
        stats_m = [m for m in self.stats_metrics if m in set(table.metric)]
        wil = (pairwise_wilcoxon(table[["method", "image", "metric", "value"]], metric=stats_m, methods=labels,
                                 test_method=self.test_method) if len(labels) >= 2 and stats_m else pd.DataFrame())
        meta["timings"]["statistics_s"] = time.perf_counter() - t
        shown = {m: reduce_map(maps, self.channel_reduce).detach() for (_, m), maps in res.maps.items()}
        specs = [s for s in self.specs if s.label in labels]
        out = QualityResult(table, specs, wil, meta, shown, res.images, self.out, select_metric=self.select_metric)
        meta["best_aggregate"] = out.best_aggregate
        if self.out is not None:
            if self.figures:
                t = time.perf_counter()
                from sanitas.report.quality_figures import quality_figures

                out.figures = quality_figures(out, self.out / "figures")
                meta["timings"]["figures_s"] = time.perf_counter() - t
            meta["timings"]["total_s"] = meta["timings"].get("total", 0.0) + time.perf_counter() - t0
            engine.write_meta(self.out, meta)
            if not wil.empty:
                atomic_write_table(self.out / "wilcoxon.csv", wil)
            atomic_write_table(self.out / "summary.csv", out.summary())
            lt = out.layer_table()
            if not lt.empty:
                atomic_write_table(self.out / "layers.csv", lt)
            from sanitas.report.html import quality_report

            out.report = quality_report(out, self.out)
        return out

    @classmethod
    def run_entry(cls, spec: dict, out: Path, quiet: bool):
        from sanitas.evaluate.quality_scalars import quality_outcome

        return quality_outcome(cls, spec, out, quiet)


def evaluate_quality(model: nn.Module, x: torch.Tensor, y=None, *, methods: Any = ("gradient", "fullgrad", "random"),
                     layers: str | Sequence[str] | None = None, target: Any = "predicted",
                     orders: Sequence[str] = REMOVAL_ORDERS, removal: Any = "zero", n_shuffles: int = 10, seed: int = 0,
                     channel_reduce: str = "abs_sum", interpolation: str = "bilinear", search: str = "multilevel",
                     levels_per_round: int | None = None, batch_size: int = 256,
                     stats_metrics: Sequence[str] = STATS_METRICS, select_metric: str = "delta_e_minus",
                     test_method: str = "auto", out: str | Path | None = None, resume: bool = True,
                     figures: bool = True, show: int = 8, quiet: bool | None = None, output=None,
                     executor=None) -> QualityResult:
    """Evaluate saliency methods on ``model`` with the decision-flip metric (:class:`Quality`; module docs).

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
    recomputes everything). A method that cannot explain the model is left out
    (``result.meta["refused"]``); ``executor``: where the cells run, as for every check.
    """
    return Quality(model, x, y, methods=methods, layers=layers, target=target, orders=orders, removal=removal,
                   n_shuffles=n_shuffles, seed=seed, channel_reduce=channel_reduce, interpolation=interpolation,
                   search=search, levels_per_round=levels_per_round, batch_size=batch_size,
                   stats_metrics=stats_metrics, select_metric=select_metric, test_method=test_method, out=out,
                   resume=resume, figures=figures, show=show, quiet=quiet, output=output, executor=executor).run()


def evaluate_methods(model: nn.Module, x: torch.Tensor, y=None, methods: Any = ("gradient", "fullgrad", "random"),
                     **kwargs) -> QualityResult:
    """The older name of :func:`evaluate_quality` (deprecated; same arguments, ``methods`` also by position)."""
    import warnings

    warnings.warn("evaluate_methods is now evaluate_quality (the quality check: `sanitas quality`, `check: quality`)",
                  FutureWarning, stacklevel=2)
    return evaluate_quality(model, x, y, methods=methods, **kwargs)
