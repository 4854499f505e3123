"""The result of :func:`sanitas.evaluate.evaluate_quality`: summaries, layer tests, the best aggregate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sanitas.evaluate.perturbation import HIGHER_IS_BETTER
from sanitas.evaluate.quality_methods import MethodSpec


def _summary(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """:func:`sanitas.checks.result.summarize_table` per (method, metric), with the median and quartiles of
    the finite values."""
    from sanitas.checks.result import summarize_table

    out = summarize_table(table, by=("method", "metric", "family", "layer_index"), n_boot=n_boot, seed=seed)
    if out.empty:
        return out
    quartiles = []
    for _, g in table.groupby(["method", "metric"], sort=False):
        v = g["value"].to_numpy(dtype=float)
        fin = v[np.isfinite(v)]
        quartiles.append((float(np.median(fin)), float(np.quantile(fin, 0.25)), float(np.quantile(fin, 0.75)))
                         if fin.size else (np.nan, np.nan, np.nan))
    out[["median", "q25", "q75"]] = quartiles
    out["layer_index"] = out["layer_index"].astype(int)
    return out[["method", "metric", "family", "layer_index", "mean", "ci_low", "ci_high", "median", "q25", "q75",
                "n", "nan_count"]]


@dataclass
class QualityResult:
    """What :func:`~sanitas.evaluate.evaluate_quality` returns.

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

    def pivot(self, metric: str | Sequence[str] = ("delta_e_minus", "e_minus", "delta_e_delta"),
              stat: str = "mean") -> pd.DataFrame:
        """Methods x metrics table of one statistic (rows in evaluation order); ``metric``: one name or several.
        The same call as :meth:`sanitas.checks.CheckResult.pivot` (whose columns are the stages)."""
        metrics = [metric] if isinstance(metric, str) else list(metric)
        s = self.summary()
        s = s[s["metric"].isin(metrics)]
        p = s.pivot(index="method", columns="metric", values=stat)
        return p.reindex(index=[m for m in self.methods if m in p.index],
                         columns=[m for m in metrics if m in p.columns])

    def verdicts(self, metric: str | None = None, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
        """Per method: is its map better than its own maps of other images (grabska2020's shuffled-map
        baseline)? ``metric``: a delta metric (default the result's ``select_metric``, ``delta_e_minus``). The
        estimate is the mean over images with a 95% bootstrap interval, judged by :func:`sanitas.verdict.judge`
        as every verdict is: *pass* when the whole interval is on the better side of 0, *fail* when it is all on
        the other side, *inconclusive* otherwise. Columns as :meth:`sanitas.checks.CheckResult.verdicts`'s."""
        from sanitas.check_verdicts import LABELS
        from sanitas.utils.bootstrap import Resampler, table_mean
        from sanitas.verdict import judge

        metric = metric or self.select_metric
        if not metric.startswith("delta_"):
            raise ValueError(f"verdicts compare a method with its shuffled maps: use a delta_* metric, not {metric!r}")
        op = ">" if HIGHER_IS_BETTER.get(metric, True) else "<"
        rows = []
        for method in self.methods:
            t = self.table[(self.table.method == method) & (self.table.metric == metric)]
            d = table_mean(t, Resampler(n_boot, seed))
            verdict, diff = judge(d, op, 0.0)
            lo, hi = diff.ci()
            rows.append({"method": method, "stage": "original", "metric": metric, "estimate": d.estimate,
                         "ci_low": lo, "ci_high": hi, "reference": f"0: the method's own maps of other images "
                         f"({metric} {op} 0 is better)", "verdict": LABELS[verdict],
                         "why": "", "n": d.n, "excluded": d.excluded})
        return pd.DataFrame(rows)

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
