"""Explanation quality of several methods on one model: seed 002's evaluation (sections 4-5).

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
    over channels of ``|map|``. This is seed 002's gradient baseline ``sum_RGB |df/dx|`` and, for
    the layer maps below, ``|a|``. Pass ``channel_reduce="sum"`` to rank pixels by signed values.

Layer methods (``layers=`` or the method tokens ``"layers"`` / ``"aggregates"``)
    The *layers* of a model are its parameterized spatial layers whose output carries a bias,
    in forward order: every ``Conv2d`` with a bias and every ``BatchNorm2d`` (a ``Conv2d``
    without bias followed by BatchNorm, as in ResNets, is represented by the BatchNorm, whose
    output ``h^l = W h^{l-1} + b^l`` contains the bias, as in seed 002's notation). A ResNet's
    shortcut BatchNorm is a layer too; it comes after the block's main path in forward order.
    :func:`layer_methods` names, for layer ``i`` (1-based):

    * ``activity[i]`` = ``activity(layers=[NAME])``: Psi(|a^{h,l}|), Eq. 11, bilinear upsampling;
    * ``bias[i]`` = ``bias(layers=[NAME])``: Psi(|a^{b,l}|), Eq. 12;
    * ``top-k`` = ``activity(layers=[...], aggregate=top-k)``: the top-down aggregate of Eq. 16
      over the last ``k`` layers (``k = 2..L``; ``top-1`` ranks pixels exactly as
      ``activity[L]`` and is not repeated), and ``all+input`` (all layers plus the input
      attributions, seed 002's cyan curve). Psi rescales each layer's map to [0, 1] before the
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from sanitas import engine
from sanitas.errors import ConfigError, InputError
from sanitas.evaluate.perturbation import HIGHER_IS_BETTER, METRICS, ORDERS, perturbation_scores, reduce_map
from sanitas.evaluate.stats import pairwise_wilcoxon
from sanitas.explain import Explainer, get_explainer
from sanitas.explain._core import check_images, eval_mode, logits_of, model_device, resolve_target
from sanitas.utils.hashing import model_fingerprint, tensor_digest
from sanitas.utils.io import atomic_write_table
from sanitas.utils.progress import progress

__all__ = ["evaluate_methods", "layer_methods", "spatial_layers", "QualityResult", "MethodSpec"]

#: metrics tested pairwise by default (the paper's main metrics and the recommended delta_e_delta)
STATS_METRICS = ("delta_e_minus", "e_minus", "delta_e_plus", "delta_e_delta")
#: method tokens expanded by :func:`expand_methods`
TOKENS = ("layers", "aggregates")


@dataclass
class MethodSpec:
    """One evaluated method: its table label, how to build it, and what it is."""

    label: str
    method: Any                 # a method name (with options), an Explainer or a callable
    family: str = ""            # activity | bias | aggregate | the registry name | "custom"
    layer: str = ""             # layer name for per-layer maps
    layer_index: int = 0        # 1-based layer index (0: not a single-layer map; k for top-k)

    def spec(self) -> str:
        return self.method if isinstance(self.method, str) else repr(self.method)


# --------------------------------------------------------------------------------------------
# layers and method lists


def spatial_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the model's bias-carrying spatial layers in forward order (see module docstring).

    Runs one forward pass on ``x[:1]``.
    """
    from sanitas.explain.capture import capture
    from sanitas.explain.layers import layer_bias

    check_images(x)
    x1 = x[:1].detach().to(model_device(model))
    with eval_mode(model), torch.no_grad():
        _, seen = capture(model, x1, None, (nn.Conv2d, nn.BatchNorm2d))
    names = [n for n, m, out in seen if out.dim() == 4 and layer_bias(m) is not None]
    if not names:
        raise ConfigError("the model has no convolutional or BatchNorm2d layer with a bias, so there are no "
                          "per-layer activity / bias maps to evaluate; drop layers= / the 'layers' token")
    return names


def layer_methods(model: nn.Module, x: torch.Tensor, layers: str | Sequence[str] = "all", *,
                  per_layer: bool = True, aggregates: bool = True, interpolation: str = "bilinear") -> list[MethodSpec]:
    """Per-layer activity and bias maps and top-down activity aggregates for ``model``.

    ``layers``: ``"all"`` (every layer of :func:`spatial_layers`) or a list of layer names (in
    forward order). Returns :class:`MethodSpec` s labelled ``activity[i]``, ``bias[i]`` (if
    ``per_layer``) and ``top-2`` ... ``top-L``, ``all+input`` (if ``aggregates``).
    """
    available = spatial_layers(model, x)
    if isinstance(layers, str):
        if layers != "all":
            raise ConfigError(f"layers must be 'all' or a list of layer names, got {layers!r}")
        names = available
    else:
        names = list(layers)
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ConfigError(f"layer(s) {unknown} are not bias-carrying spatial layers of the model; "
                              f"choose from {available}")
        names = [n for n in available if n in names]  # forward order
    interp = "" if interpolation == "bilinear" else f", interpolation={interpolation}"
    out: list[MethodSpec] = []
    from sanitas.explain.registry import parse_value

    # nn.Sequential layers are named 0, 1, ...: quoted, or the method name would read them as numbers
    quoted = [n if parse_value(n) == n else f"'{n}'" for n in names]
    if per_layer:
        for i, (n, q) in enumerate(zip(names, quoted), 1):
            out.append(MethodSpec(f"activity[{i}]", f"activity(layers=[{q}]{interp})", "activity", n, i))
            out.append(MethodSpec(f"bias[{i}]", f"bias(layers=[{q}]{interp})", "bias", n, i))
    if aggregates and len(names) >= 2:
        joined = ", ".join(quoted)
        for k in range(2, len(names) + 1):
            out.append(MethodSpec(f"top-{k}", f"activity(layers=[{joined}], aggregate=top-{k}{interp})",
                                  "aggregate", "", k))
        out.append(MethodSpec("all+input", f"activity(layers=[{joined}], aggregate=all, include_input=true{interp})",
                              "aggregate", "", len(names) + 1))
    return out


def _family(method: Any) -> str:
    if isinstance(method, str):
        from sanitas.explain import EXPLAINERS
        from sanitas.explain.registry import parse_method

        name = parse_method(method)[0]
        return EXPLAINERS.canonical(name) if name in EXPLAINERS else name
    return getattr(method, "name", "custom") if isinstance(method, Explainer) else "custom"


def expand_methods(methods, model: nn.Module | None = None, x: torch.Tensor | None = None,
                   layers: str | Sequence[str] | None = None, interpolation: str = "bilinear") -> list[MethodSpec]:
    """Method specs from a list (names, Explainers, callables, ``(label, method)`` pairs,
    :class:`MethodSpec`) or a dict ``{label: method}``; the tokens ``"layers"`` and
    ``"aggregates"`` expand to :func:`layer_methods`. ``layers`` (``"all"`` or names) adds both."""
    if isinstance(methods, (str, Explainer)) or callable(methods):
        methods = [methods]
    items = list(methods.items()) if isinstance(methods, Mapping) else list(methods)
    specs: list[MethodSpec] = []
    want_layers = want_aggr = layers is not None
    for item in items:
        if isinstance(item, MethodSpec):
            specs.append(item)
            continue
        if isinstance(item, str) and item.strip() in TOKENS:
            want_layers |= item.strip() == "layers"
            want_aggr |= item.strip() == "aggregates"
            continue
        label, m = item if isinstance(item, tuple) else (None, item)
        if label is None:
            label = m.strip() if isinstance(m, str) else (repr(m) if isinstance(m, Explainer)
                                                          else getattr(m, "__name__", type(m).__name__))
        specs.append(MethodSpec(str(label), m, _family(m)))
    if want_layers or want_aggr:
        if model is None or x is None:
            raise ConfigError("layer methods need the model and images to find the layers")
        specs = layer_methods(model, x, layers if layers is not None else "all", per_layer=want_layers,
                              aggregates=want_aggr, interpolation=interpolation) + specs
    if not specs:
        raise ConfigError("no method to evaluate: give method names (see `sanitas methods`) or layers='all'")
    seen: set[str] = set()
    for s in specs:
        if s.label in seen:
            raise ConfigError(f"method {s.label!r} is listed twice; give each method once (or distinct labels)")
        seen.add(s.label)
    return specs


# --------------------------------------------------------------------------------------------
# the result


def _summary(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    from sanitas.utils.stats import summarize

    rows = []
    for (method, metric), g in table.groupby(["method", "metric"], sort=False):
        v = g["value"].to_numpy(dtype=float)
        s = summarize(v, n_boot=n_boot, seed=seed)
        fin = v[np.isfinite(v)]
        rows.append({"method": method, "metric": metric, "family": g["family"].iloc[0],
                     "layer_index": int(g["layer_index"].iloc[0]), "mean": s["mean"], "ci_low": s["ci_low"],
                     "ci_high": s["ci_high"], "median": float(np.median(fin)) if fin.size else np.nan,
                     "q25": float(np.quantile(fin, 0.25)) if fin.size else np.nan,
                     "q75": float(np.quantile(fin, 0.75)) if fin.size else np.nan,
                     "n": s["n"], "nan_count": s["nan_count"]})
    return pd.DataFrame(rows)


@dataclass
class QualityResult:
    """What :func:`evaluate_methods` returns.

    ``table``: one row per (method, image, metric) with columns ``method, variant, stage, metric,
    image, value, target, family, layer, layer_index``; ``specs``: the evaluated methods;
    ``wilcoxon``: pairwise tests (every pair of methods, per metric in ``stats_metrics``);
    ``maps``: ``{method: (show, H, W)}`` saliency of the first images; ``figures``, ``report``.
    """

    table: pd.DataFrame
    specs: list[MethodSpec]
    wilcoxon: pd.DataFrame
    meta: dict[str, Any]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    images: torch.Tensor | None = None
    out_dir: Path | None = None
    figures: list[Path] = field(default_factory=list)
    report: Path | None = None
    select_metric: str = "delta_e_minus"
    _summary: pd.DataFrame | None = None

    @property
    def methods(self) -> list[str]:
        return [s.label for s in self.specs]

    def summary(self) -> pd.DataFrame:
        """Per method and metric: mean with a 95% bootstrap CI, median and quartiles, n, NaN count."""
        if self._summary is None:
            self._summary = _summary(self.table, seed=self.meta.get("config", {}).get("seed", 0))
        return self._summary

    def pivot(self, metrics: Sequence[str] = ("delta_e_minus", "e_minus", "delta_e_delta"),
              stat: str = "mean") -> pd.DataFrame:
        """Methods x metrics table of one statistic (rows in evaluation order)."""
        s = self.summary()
        s = s[s["metric"].isin(list(metrics))]
        p = s.pivot(index="method", columns="metric", values=stat)
        return p.reindex(index=[m for m in self.methods if m in p.index],
                         columns=[m for m in metrics if m in p.columns])

    def _test(self, a: str, b: str, metric: str) -> dict:
        w = self.wilcoxon
        hit = w[(w.metric == metric) & (((w.method_a == a) & (w.method_b == b)) | ((w.method_a == b) & (w.method_b == a)))]
        if not hit.empty:
            r = hit.iloc[0].to_dict()
            if r["method_a"] != a:  # report as a - b
                r.update(method_a=a, method_b=b, rank_biserial=-r["rank_biserial"],
                         median_difference=-r["median_difference"], mean_difference=-r["mean_difference"])
            return r
        from sanitas.evaluate.stats import wilcoxon_pair

        t = self.table[self.table.metric == metric].pivot(index="image", columns="method", values="value")
        r = {"metric": metric, "method_a": a, "method_b": b, **wilcoxon_pair(t[a].to_numpy(), t[b].to_numpy())}
        med, hib = r["median_difference"], HIGHER_IS_BETTER.get(metric)
        r["favours"] = "" if hib is None or not np.isfinite(med) or med == 0 else (a if (med > 0) == hib else b)
        r["p_adjusted"] = np.nan
        return r

    def layer_table(self, metrics: Sequence[str] = ("delta_e_minus", "e_minus", "delta_e_delta")) -> pd.DataFrame:
        """Activity vs bias per layer: means, Wilcoxon p (raw and Holm-adjusted over the layers of
        each metric), rank-biserial effect size (positive: activity better) and the winner."""
        layers = sorted({(s.layer_index, s.layer) for s in self.specs if s.family == "activity"})
        labels = set(self.methods)
        rows = []
        for metric in metrics:
            if metric not in set(self.table.metric):
                continue
            block = []
            for i, name in layers:
                a, b = f"activity[{i}]", f"bias[{i}]"
                if a not in labels or b not in labels:
                    continue
                r = self._test(a, b, metric)
                s = self.summary().set_index(["method", "metric"])
                sign = 1.0 if HIGHER_IS_BETTER.get(metric) is not False else -1.0
                block.append({"metric": metric, "layer_index": i, "layer": name,
                              "activity_mean": s.loc[(a, metric), "mean"], "bias_mean": s.loc[(b, metric), "mean"],
                              "median_difference": r["median_difference"], "p_value": r["p_value"],
                              "rank_biserial": sign * r["rank_biserial"],
                              "winner": {a: "activity", b: "bias"}.get(r["favours"], "tie")})
            if block:
                from sanitas.evaluate.stats import holm

                frame = pd.DataFrame(block)
                frame.insert(frame.columns.get_loc("p_value") + 1, "p_holm", holm(frame["p_value"].to_numpy()))
                rows.append(frame)
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

    def _aggregate_candidates(self) -> list[str]:
        single = [s for s in self.specs if s.family == "activity"]
        top = [f"activity[{max(s.layer_index for s in single)}]"] if single else []
        return top + [s.label for s in self.specs if s.family == "aggregate"]

    def aggregate_ranking(self, metric: str | None = None) -> pd.DataFrame:
        """Aggregate candidates (top layer, top-k, all+input) ranked by the mean of ``metric``."""
        metric = metric or self.select_metric
        cands = self._aggregate_candidates()
        if not cands:
            return pd.DataFrame()
        s = self.summary()
        s = s[(s.metric == metric) & s.method.isin(cands)].copy()
        asc = HIGHER_IS_BETTER.get(metric) is False
        s = s.sort_values("mean", ascending=asc).reset_index(drop=True)
        s.insert(0, "rank", np.arange(1, len(s) + 1))
        return s[["rank", "method", "mean", "ci_low", "ci_high", "median", "n"]]

    @property
    def best_aggregate(self) -> str | None:
        r = self.aggregate_ranking()
        return None if r.empty else str(r.iloc[0]["method"])

    def comparison(self, metrics: Sequence[str] = ("delta_e_minus", "e_minus", "delta_e_delta"),
                   reference: str | None = None) -> pd.DataFrame:
        """``reference`` (default: the best aggregate) against the runner-up aggregate, the best
        single layer, FullGrad, the input gradient and every other method; Wilcoxon per metric."""
        ref = reference or self.best_aggregate
        if ref is None:
            return pd.DataFrame()
        ranking = self.aggregate_ranking()
        single = [s.label for s in self.specs if s.family == "activity"]
        sm = self.summary()
        sm = sm[sm.metric == self.select_metric].set_index("method")["mean"]
        roles: dict[str, str] = {}
        if len(ranking) > 1:
            roles[str(ranking.iloc[1]["method"])] = "runner-up aggregate"
        if single:
            best_single = max(single, key=lambda m: sm.get(m, -np.inf))
            roles.setdefault(best_single, "best single layer")
        for s in self.specs:
            if s.label != ref and s.family not in ("activity", "bias", "aggregate"):
                roles.setdefault(s.label, s.family)
        rows = []
        for metric in metrics:
            if metric not in set(self.table.metric):
                continue
            for other, role in roles.items():
                if other == ref:
                    continue
                r = self._test(ref, other, metric)
                rows.append({"metric": metric, "reference": ref, "other": other, "role": role,
                             "median_difference": r["median_difference"], "mean_difference": r["mean_difference"],
                             "p_value": r["p_value"], "rank_biserial": r["rank_biserial"], "favours": r["favours"]})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        n_img = self.table["image"].nunique() if len(self.table) else 0
        best = f", best aggregate {self.best_aggregate}" if self.best_aggregate else ""
        return f"QualityResult({len(self.specs)} methods, {n_img} images, {len(self.table)} rows{best})"


# --------------------------------------------------------------------------------------------
# the evaluation


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
                     orders: Sequence[str] = ORDERS, removal: Any = "zero", n_shuffles: int = 10, seed: int = 0,
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
    check_images(x)
    if x.dim() != 4:
        raise InputError(f"images must be (N, C, H, W); got shape {tuple(x.shape)}")
    if len(x) < 2 and n_shuffles > 0:
        raise InputError("the shuffled-map baseline needs at least 2 images (xi come from other images)")
    if select_metric not in METRICS:
        raise ConfigError(f"unknown select_metric {select_metric!r}: use one of {list(METRICS)}")
    unknown = [m for m in stats_metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown} in stats_metrics; metrics: {list(METRICS)}")
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
            res.report = quality_report(res, out_dir)
        else:
            timings["total_s"] = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------------------------
# figures and report


def _values(res: QualityResult, method: str, metric: str) -> np.ndarray:
    t = res.table
    v = t.loc[(t.method == method) & (t.metric == metric), "value"].to_numpy(dtype=float)
    return v[np.isfinite(v)]


def _reference_band(ax, res: QualityResult, method: str, metric: str, color: str, label: str) -> None:
    if method not in res.methods:
        return
    v = _values(res, method, metric)
    if v.size == 0:
        return
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    ax.axhspan(q25, q75, color=color, alpha=0.15, lw=0)
    ax.axhline(med, color=color, lw=1.2, label=f"{label} (median, IQR)")


def _finish_axis(ax, metric: str) -> None:
    from sanitas.evaluate.plots import _LABELS

    if metric.startswith("delta"):
        ax.axhline(0.0, color="grey", lw=0.6, ls=":")
    hib = HIGHER_IS_BETTER.get(metric)
    ax.set_ylabel(_LABELS.get(metric, metric) + ("  (higher is better)" if hib else
                                                 "  (lower is better, axis reversed)" if hib is False else ""))
    if hib is False:
        lo, hi = ax.get_ylim()
        ax.set_ylim(hi, lo)
    ax.grid(axis="y", alpha=0.3)


def layers_figure(res: QualityResult, path: Path, metrics: Sequence[str] = ("delta_e_minus", "e_minus")) -> Path | None:
    """Seed 002 Fig. 5: activity (blue) vs bias (red) maps per layer, gradient in grey; Holm p-values."""
    from sanitas.evaluate.plots import p_label
    from sanitas.report.figures import new_figure, save_figure

    lt = res.layer_table(metrics)
    if lt.empty:
        return None
    metrics = [m for m in metrics if m in set(lt.metric)]
    idx = sorted(set(lt.layer_index))
    fig = new_figure((max(5.0, 0.8 * len(idx) + 2.5), 3.2 * len(metrics)))
    for k, metric in enumerate(metrics, 1):
        ax = fig.add_subplot(len(metrics), 1, k)
        _reference_band(ax, res, "gradient", metric, "grey", "gradient")
        for off, fam, color in ((-0.18, "activity", "tab:blue"), (0.18, "bias", "tab:red")):
            data = [_values(res, f"{fam}[{i}]", metric) for i in idx]
            bp = ax.boxplot(data, positions=np.array(idx) + off, widths=0.32, whis=(5, 95), showfliers=False,
                            patch_artist=True, medianprops={"color": "black"}, manage_ticks=False)
            for p in bp["boxes"]:
                p.set_facecolor(color)
                p.set_alpha(0.7)
            bp["boxes"][0].set_label(f"{fam} $|a^{{{'h' if fam == 'activity' else 'b'},l}}|$")
        ax.set_xticks(idx, [str(i) for i in idx])
        ax.set_xlim(min(idx) - 0.6, max(idx) + 0.6)
        _finish_axis(ax, metric)
        sub = lt[lt.metric == metric].set_index("layer_index")
        for i in idx:
            ax.annotate(p_label(sub.loc[i, "p_holm"]), (i, 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=7)
        if k == len(metrics):
            ax.set_xlabel("layer (forward order; names in the report)")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("activity vs bias attributions per layer (Wilcoxon, Holm over layers)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def aggregates_figure(res: QualityResult, path: Path, metrics: Sequence[str] = ("delta_e_minus", "e_minus")) -> Path | None:
    """Seed 002 Fig. 6: single layers (blue) and top-down aggregates (cyan) by layer, with FullGrad
    (purple), the input gradient (grey) and random maps (black) as bands; the best aggregate starred."""
    from sanitas.report.figures import new_figure, save_figure

    single = sorted((s.layer_index, s.label) for s in res.specs if s.family == "activity")
    aggr = [s for s in res.specs if s.family == "aggregate"]
    if not single and not aggr:
        return None
    L = max([i for i, _ in single] + [s.layer_index - 1 for s in aggr if s.label == "all+input"] +
            [s.layer_index for s in aggr if s.label != "all+input"])
    best = res.best_aggregate
    fig = new_figure((max(5.5, 0.7 * (L + 1) + 3.0), 3.2 * len(metrics)))
    for k, metric in enumerate(metrics, 1):
        ax = fig.add_subplot(len(metrics), 1, k)
        for m, color, lab in (("fullgrad", "tab:purple", "FullGrad"), ("gradient", "grey", "gradient"),
                              ("random", "black", "random")):
            _reference_band(ax, res, m, metric, color, lab)
        if single:
            pos = np.array([i for i, _ in single], dtype=float) - 0.18
            bp = ax.boxplot([_values(res, m, metric) for _, m in single], positions=pos, widths=0.32, whis=(5, 95),
                            showfliers=False, patch_artist=True, medianprops={"color": "black"}, manage_ticks=False)
            for p in bp["boxes"]:
                p.set_facecolor("tab:blue")
                p.set_alpha(0.7)
            bp["boxes"][0].set_label("single layer l")
        # top-k aggregates start at layer l0 = L - k + 1; all+input is drawn at l0 = 0
        ag = [(0 if s.label == "all+input" else L - s.layer_index + 1, s.label) for s in aggr]
        if ag:
            bp = ax.boxplot([_values(res, m, metric) for _, m in ag], positions=np.array([p for p, _ in ag]) + 0.18,
                            widths=0.32, whis=(5, 95), showfliers=False, patch_artist=True,
                            medianprops={"color": "black"}, manage_ticks=False)
            for p in bp["boxes"]:
                p.set_facecolor("tab:cyan")
                p.set_alpha(0.7)
            bp["boxes"][0].set_label("aggregate of layers l..L (0: + input)")
        if best is not None:
            if best.startswith("activity["):
                bx = [i for i, m in single if m == best][0] - 0.18
            else:
                bx = [p for p, m in ag if m == best][0] + 0.18
            ax.annotate("best", (bx, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=7,
                        color="tab:green", fontweight="bold")
        ticks = list(range(0 if ag else 1, L + 1))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlim(ticks[0] - 0.6, L + 0.6)
        _finish_axis(ax, metric)
        if k == len(metrics):
            ax.set_xlabel("layer l (single) / first layer l0 of the top-down aggregate")
        ax.legend(fontsize=6, loc="best", ncol=2)
    fig.suptitle("single layers vs top-down aggregates (seed 002 Fig. 6)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def quality_figures(res: QualityResult, fig_dir: Path) -> list[Path]:
    """All figures of a quality run: per-metric box plots of every method (seed 002 Figs. 14-16),
    the activity-vs-bias layer figure (Fig. 5) and the aggregates figure (Fig. 6)."""
    from sanitas.evaluate.plots import boxplot_metrics

    fig_dir = Path(fig_dir)
    paths: list[Path] = []
    present = set(res.table.metric)
    for name, metrics in (("delta_metrics", ("delta_e_minus", "delta_e_plus", "delta_e_delta")),
                          ("e_metrics", ("e_minus", "e_plus", "e_delta")),
                          ("xi_metrics", ("e_minus_xi", "e_plus_xi", "e_delta_xi"))):
        ms = [m for m in metrics if m in present]
        if ms:
            # p-values are in wilcoxon.csv and the report (annotating them here would re-run the tests)
            boxplot_metrics(res.table, ms, methods=res.methods, path=fig_dir / f"{name}.png")
            paths.append(fig_dir / f"{name}.png")
    for fn, name in ((layers_figure, "layers.png"), (aggregates_figure, "aggregates.png")):
        p = fn(res, fig_dir / name)
        if p is not None:
            paths.append(p)
    return paths


def quality_report(res: QualityResult, out_dir: Path) -> Path:
    from sanitas.report.html import embed_png, render, table_html

    sections = []
    piv = res.pivot(("delta_e_minus", "e_minus", "delta_e_plus", "e_plus", "delta_e_delta")).reset_index()
    sections.append({"id": "summary", "title": "Summary (mean over images)", "tables": [
        {"caption": "delta_e_* compare each map with maps of the same method for other images (higher delta_e_minus "
                    "and delta_e_delta, lower delta_e_plus are better); bootstrap CIs in summary.csv",
         "html": table_html(piv)}]})
    lt = res.layer_table()
    if not lt.empty:
        names = lt.drop_duplicates("layer_index")[["layer_index", "layer"]]
        n_act = int(((lt.metric == res.select_metric) & (lt.winner == "activity")).sum())
        n_all = int((lt.metric == res.select_metric).sum())
        sections.append({"id": "layers", "title": "Activity vs bias attributions per layer",
                         "text": f"On {res.select_metric}, activity maps beat bias maps in {n_act} of {n_all} layers "
                                 "(Wilcoxon signed-rank test paired per image, Holm-adjusted over layers; "
                                 "rank_biserial > 0 favours activity).",
                         "tables": [{"caption": "per-layer tests", "html": table_html(lt, "{:.3g}")},
                                    {"caption": "layer names", "html": table_html(names)}]})
    rk = res.aggregate_ranking()
    if not rk.empty:
        cmp_ = res.comparison()
        sections.append({"id": "aggregates", "title": f"Best aggregate: {res.best_aggregate}",
                         "text": f"Candidates ranked by mean {res.select_metric}; the best is compared with the "
                                 "others by Wilcoxon tests (positive median_difference: the best aggregate is higher).",
                         "tables": [{"caption": "ranking", "html": table_html(rk, "{:.4f}")},
                                    {"caption": "comparison", "html": table_html(cmp_, "{:.3g}")}]})
    if not res.wilcoxon.empty:
        w = res.wilcoxon[res.wilcoxon.metric == res.select_metric]
        sections.append({"id": "wilcoxon", "title": f"Pairwise Wilcoxon tests ({res.select_metric})",
                         "text": "All pairs and metrics are in wilcoxon.csv (Holm-adjusted per metric).",
                         "tables": [{"caption": "", "html": table_html(w, "{:.3g}")}]})
    sections.append({"id": "figures", "title": "Figures", "figures": [{"src": embed_png(p), "alt": p.name}
                                                                       for p in res.figures]})
    import json

    cfg = {k: v for k, v in res.meta["config"].items()}
    sections.append({"id": "config", "title": "Configuration and timings",
                     "pre": json.dumps({"config": cfg, "methods": res.meta["methods"],
                                        "timings": res.meta["timings"]}, indent=1, default=str)})
    n_img = res.table["image"].nunique()
    return render(out_dir / "report.html", "Explanation quality (decision-flip metric, seed 002)", sections,
                  subtitle=f"{len(res.specs)} methods, {n_img} images")
