"""A ``check: quality`` config entry: the quality check (:class:`sanitas.evaluate.quality.Quality`) on the
entry's model and images, and the named numbers its claims read."""

from __future__ import annotations

import time
from pathlib import Path

_EVAL_KEYS = ("layers", "target", "orders", "removal", "n_shuffles", "channel_reduce", "interpolation", "search",
              "select_metric", "test_method")


def _layers_in(label: str, n_layers: int) -> int:
    """How many layers an aggregate candidate spans: activity[L] -> 1, top-k -> k, all+input -> L + 1."""
    if label.startswith("top-"):
        return int(label[4:])
    if label == "all+input":
        return n_layers + 1
    return 1


def quality_outcome(cls, spec: dict, out: Path, quiet: bool):
    """grabska2020's decision-flip evaluation. Scalars: ``mean/<metric>/<method>``; activity vs bias over
    layers (``activity_vs_bias_p/<metric>``: one-sided Wilcoxon over images of the per-image mean over
    layers of activity - bias,
    ``layers_activity_better/<metric>``: fraction of layers whose mean favours activity,
    ``layers_activity_wins/<metric>`` / ``layers_bias_wins/<metric>``: layers significant after Holm at 0.05);
    ``best_aggregate_layers``, ``n_layers``; ``best_vs/<role>/p`` and ``best_vs/<role>/favours_best``."""
    import numpy as np

    from sanitas.evaluate.stats import wilcoxon_pair
    from sanitas.experiments.runner_base import Outcome, _data, build_methods, model_call

    t0 = time.perf_counter()
    src, net, ds = _data(spec, quiet)
    kw = {k: spec[k] for k in _EVAL_KEYS if k in spec}
    methods = spec.get("methods", ["gradient", "fullgrad", "random"])
    methods = methods if all(isinstance(m, str) for m in methods) else build_methods(methods)
    with model_call(output=src.output):
        res = cls(net, ds.x, ds.y, methods=methods, seed=int(spec["seed"]), out=out,
                  resume=spec.get("resume", True), quiet=quiet, **kw).run()
    scalars: dict[str, float] = {}
    summ = res.summary()
    for r in summ.to_dict("records"):
        scalars[f"mean/{r['metric']}/{r['method']}"] = float(r["mean"])
    lt = res.layer_table()
    t = res.table
    n_layers = len({s.layer_index for s in res.specs if s.family == "activity"})
    scalars["n_layers"] = float(n_layers)
    if len(lt):
        for metric, g in lt.groupby("metric"):
            scalars[f"layers_activity_better/{metric}"] = float((g["activity_mean"] > g["bias_mean"]).mean())
            sig = g["p_holm"] < 0.05
            scalars[f"layers_activity_wins/{metric}"] = float((sig & (g["winner"] == "activity")).sum())
            scalars[f"layers_bias_wins/{metric}"] = float((sig & (g["winner"] == "bias")).sum())
            w = t[t["metric"] == metric].pivot_table(index="image", columns="method", values="value")
            # one paired statistic per image (the mean over layers of activity - bias): the layers of one
            # image are not independent observations, so pooling (image, layer) pairs overstated n
            a = np.stack([w[f"activity[{i}]"].to_numpy() for i in g["layer_index"]], axis=1)
            b = np.stack([w[f"bias[{i}]"].to_numpy() for i in g["layer_index"]], axis=1)
            with np.errstate(invalid="ignore"):
                per_image = np.nanmean(a - b, axis=1)
            ok = np.isfinite(per_image) & (per_image != 0)  # ties out before the test, as before
            if ok.sum() > 0:
                scalars[f"activity_vs_bias_p/{metric}"] = wilcoxon_pair(
                    per_image[ok], np.zeros(int(ok.sum())), alternative="greater")["p_value"]
    best = res.best_aggregate
    if best is not None:
        scalars["best_aggregate_layers"] = float(_layers_in(best, n_layers))
        comp = res.comparison()
        for r in comp[comp["metric"] == res.select_metric].to_dict("records"):
            scalars[f"best_vs/{r['role']}/p"] = float(r["p_value"])
            scalars[f"best_vs/{r['role']}/favours_best"] = float(r["favours"] == r["reference"])
    summary = res.pivot().reset_index()
    return Outcome(res.table, scalars, None, list(res.figures), res.report, time.perf_counter() - t0, summary, res)
