"""One runner per check kind: config entry in, :class:`Outcome` (tidy table + named scalars) out.
The registry, ``Outcome`` and the shared builders are in :mod:`sanitas.experiments.runner_base`.

Every runner writes its own results directory (``results.parquet``, ``meta.json``, figures,
``report.html``) through the check it wraps, so an interrupted run resumes inside the check
(finished stages are not recomputed) and a finished experiment is not re-run at all.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from sanitas.errors import ConfigError
# the shared parts live in runner_base; they are re-exported here, where runners have always been found
from sanitas.experiments.runner_base import (RUNNERS, Outcome, _check_outcome, _data, _images,  # noqa: F401
                                             build_methods, ceiling_models, dataset_of, model_call, model_label,
                                             model_sources, runner)


_MR_KEYS = ("mode", "init", "target", "order", "blocks", "normalize", "map_stats", "calibrate", "bn_stats",
            "smooth_samples", "smooth_sigma", "draws")


@runner("model_randomization")
def run_model_randomization(spec: dict, out: Path, quiet: bool) -> Outcome:
    """The model parameter randomization test. ``init`` may be a list of schemes (adebayo2018 App. B: uniform
    re-initialization "gives identical results"): the test runs once per scheme, into ``out/<init>/``, and
    the table holds all of them with an ``init`` column that claims select (``measure: {init: uniform}``)."""
    from sanitas.explain._core import num_classes

    t0 = time.perf_counter()
    src, net, ds = _data(spec, quiet, "model parameter randomization")
    kw = {k: spec[k] for k in _MR_KEYS if k in spec}
    if isinstance(kw.get("blocks"), (list, int)):  # layer names of nn.Sequential models are numbers in YAML
        kw["blocks"] = [str(b) for b in (kw["blocks"] if isinstance(kw["blocks"], list) else [kw["blocks"]])]
    inits = kw.pop("init", "truncated_normal")
    with model_call(output=src.output):
        ceilings = ceiling_models(src, dataset_of(spec), spec.get("model_seeds", 1), int(spec["seed"]), quiet)
        k = num_classes(net, ds.x[:1])
    # the fraction of pixels the competition rule keeps when the K labels' votes are random and symmetric:
    # the chosen label's vote is the positive maximum or the negative minimum, 2/K (1 - 2^-K) (gupta2019)
    scalars = {"num_classes": k, "inverse_num_classes": 1.0 / k, "random_vote_survivors": 2.0 / k * (1 - 2.0 ** -k)}
    if isinstance(inits, str):
        return _randomization(spec, src, net, ds, ceilings, out, quiet, t0, scalars, init=inits, **kw)
    outcomes = {init: _randomization(spec, src, net, ds, ceilings, out / init, quiet, t0, scalars, init=init, **kw)
                for init in inits}
    return _per_init(outcomes, spec, out, t0, scalars)


def _randomization(spec, src, net, ds, ceilings, out, quiet, t0, scalars, **kw) -> Outcome:
    from sanitas.checks import model_randomization
    from sanitas.report.about import about_run

    with model_call(output=src.output):
        res = model_randomization(net, ds.x, ds.y, build_methods(spec.get("methods")),
                                  spec.get("metrics", ["spearman_abs", "spearman", "ssim"]), seed=int(spec["seed"]),
                                  out=out, resume=True, quiet=quiet, ceiling_model=ceilings or None, **kw)
    return _check_outcome(res, out, t0, scalars, about_run(src, ds))


def _per_init(outcomes: dict[str, Outcome], spec: dict, out: Path, t0: float, scalars: dict) -> Outcome:
    """One outcome of the randomizations with several init schemes: their tables with an ``init`` column,
    written to ``out`` (what a finished experiment is loaded from), and a report that links each scheme's."""
    from sanitas.engine import versions, write_outputs
    from sanitas.report.html import check_report_simple

    def tagged(frame, init):
        frame = frame.copy()
        frame.insert(0, "init", init)
        return frame

    table = pd.concat([tagged(o.table, i) for i, o in outcomes.items()], ignore_index=True)
    first = next(iter(outcomes.values()))
    summary = pd.concat([tagged(o.summary, i) for i, o in outcomes.items() if o.summary is not None],
                        ignore_index=True)
    figures = [f for o in outcomes.values() for f in o.figures]
    meta = {"config": spec, "versions": versions(), "inits": list(outcomes),
            "reports": {i: str(o.report.relative_to(out)) for i, o in outcomes.items() if o.report},
            "timings": {"total": time.perf_counter() - t0}}
    write_outputs(out, table, meta, first.calibration)
    text = ("Model parameter randomization with each init scheme (adebayo2018 App. B); each scheme's full report: "
            + ", ".join(f"{i}/report.html" for i in outcomes) + ".")
    report = check_report_simple(out, "sanitas: model randomization per init scheme", summary, figures, meta, text)
    return Outcome(table, scalars, first.calibration, figures, report, time.perf_counter() - t0, summary)


@runner("data_randomization")
def run_data_randomization(spec: dict, out: Path, quiet: bool) -> Outcome:
    from sanitas.checks import data_randomization
    from sanitas.checks.data_randomization import train_for_data_randomization
    from sanitas.explain._core import num_classes
    from sanitas.report.about import about_run

    t0 = time.perf_counter()
    seed = int(spec["seed"])
    src, true_model, ds = _data(spec, quiet, "data randomization (training its architecture afresh)", seed=seed)
    with model_call(output=src.output):
        trio = train_for_data_randomization(src, dataset_of(spec), seed=seed, train_size=spec.get("train_size", 2000),
                                            epochs=spec.get("epochs", 100), lr=spec.get("lr", 3e-4),
                                            target_accuracy=spec.get("target_accuracy", 0.95),
                                            ceiling=spec.get("ceiling", True), quiet=quiet)
        res = data_randomization(true_model, trio.permuted.model, ds.x, ds.y, build_methods(spec.get("methods")),
                                 spec.get("metrics", ["spearman_abs", "spearman", "ssim"]), ceiling_model=trio.ceiling,
                                 out=out, seed=seed, quiet=quiet)
        true_accuracy = _test_accuracy(src, true_model, dataset_of(spec), seed, quiet)
    pm = trio.permuted.metrics
    res.meta["permuted_training"] = pm
    res.meta["training"] = trio.notes
    with model_call(output=src.output):
        k = num_classes(true_model, ds.x[:1])
    scalars = {"permuted_train_accuracy": pm["train_accuracy"], "permuted_test_accuracy": pm["test_accuracy"],
               "permuted_memorized": float(bool(pm.get("memorized"))), "true_test_accuracy": true_accuracy,
               "chance_accuracy": 1.0 / k, "permuted_train_size": float(pm.get("n_train", float("nan")))}
    return _check_outcome(res, out, t0, scalars, about_run(src, ds))


def _test_accuracy(src, model, dataset, seed: int, quiet: bool) -> float:
    """The true-label model's test accuracy: from its training record, or measured for a model given with weights."""
    from sanitas.data import load_dataset
    from sanitas.models import accuracy, train

    if not src.has_weights:
        return train(src, dataset, seed=seed, quiet=quiet).metrics["test_accuracy"]  # the cached model
    test = load_dataset(dataset, "test")
    return accuracy(model, test.x, test.y)


@runner("input_invariance")
def run_input_invariance(spec: dict, out: Path, quiet: bool) -> Outcome:
    from sanitas.checks import input_invariance
    from sanitas.report.about import about_run

    t0 = time.perf_counter()
    src, net, ds = _data(spec, quiet, "input invariance (its twin model shifts the first layer)")
    with model_call(output=src.output):
        res = input_invariance(net, ds.x, ds.y, build_methods(spec.get("methods")),
                               spec.get("metrics", ["spearman", "spearman_abs", "ssim"]),
                               shift=float(spec.get("shift", -1.0)), shift_baselines=bool(spec.get("shift_baselines")),
                               out=out, seed=int(spec["seed"]), quiet=quiet)
    return _check_outcome(res, out, t0, {"max_logit_difference": res.meta["max_logit_difference"]},
                          about_run(src, ds))


@runner("completeness")
def run_completeness(spec: dict, out: Path, quiet: bool) -> Outcome:
    """Approximate completeness (gupta2019 section 4.1): sum of map vs logit per image across classes, per class
    across images, and pooled. The table holds the per-image fits (metric ``r2_per_image``, ``alpha_per_image``);
    scalars ``r2/...`` (pooled), ``r2_per_image/...`` and ``r2_per_class/...`` (medians)."""
    from sanitas.engine import versions, write_outputs
    from sanitas.evaluate import completeness
    from sanitas.report.html import check_report_simple

    t0 = time.perf_counter()
    src, net, ds = _data(spec, quiet)
    rows, figs, scalars, per_image = [], [], {}, []
    for name, explainer in build_methods(spec.get("methods")).items():
        with model_call(output=src.output):
            fit = completeness(net, ds.x, explainer)
        fit.method = name
        rows.append(fit.as_dict())
        safe = "".join(c if c.isalnum() else "_" for c in name)
        figs.append(fit.plot(out / "figures" / f"completeness-{safe}.png"))
        d = rows[-1]
        scalars.update({f"alpha/{name}": fit.alpha, f"beta/{name}": fit.beta, f"r2/{name}": fit.r2,
                        f"r2_per_image/{name}": d["r2_per_image"], f"r2_per_class/{name}": d["r2_per_class"]})
        r2_i, a_i = fit.per_image
        for metric, values in (("r2_per_image", r2_i), ("alpha_per_image", a_i)):
            per_image.append(pd.DataFrame({"method": name, "variant": "fit", "stage": 0, "metric": metric,
                                           "image": range(len(values)), "value": values}))
    summary = pd.DataFrame(rows)
    # one row per image and method: claims read the per-image fits with their bootstrap interval
    table = pd.concat(per_image, ignore_index=True)
    meta = {"config": spec, "versions": versions(), "timings": {"total": time.perf_counter() - t0}}
    write_outputs(out, table, meta)
    report = check_report_simple(out, "sanitas: approximate completeness", summary, figs, meta,
                                 text="Least-squares fits of sum(map_c(x)) = alpha * logit_c(x) + beta: per image "
                                      "across its classes (what competition compares), per class across images, "
                                      "and over all images and classes at once (gupta2019, section 4.1).")
    return Outcome(table, scalars, None, figs, report, time.perf_counter() - t0, summary)


@runner("biases")
def run_biases(spec: dict, out: Path, quiet: bool) -> Outcome:
    """The role of biases (grabska2020): zero-bias accuracy, f^{b=0} = alpha f + beta, per-layer bias share,
    optionally the bias-decay distillation; scalars ``<column>/<model>`` from the per-model table."""
    from sanitas.evaluate.biases import bias_analysis

    t0 = time.perf_counter()
    from sanitas.models.resolve import refuse_torchscript

    sources = model_sources(spec)
    for src in sources:
        refuse_torchscript(src, "the bias decomposition")
    outputs = {src.output for src in sources}
    if len(outputs) > 1:
        raise ConfigError(f"the models of one biases experiment take one output selector; got {sorted(map(str, outputs))}")
    distill = spec.get("distill", False)
    with model_call(output=sources[0].output):
        res = bias_analysis([src.spec_string() for src in sources], dataset_of(spec), int(spec["images"]), out,
                            seed=int(spec["seed"]), distill=distill, distill_kwargs=spec.get("distill_options"),
                            accuracy_images=spec.get("accuracy_images"), quiet=quiet)
    scalars = {}
    for rec in res.models.to_dict("records"):
        for key, value in rec.items():
            if key != "model" and isinstance(value, (int, float)) and value == value:
                scalars[f"{key}/{rec['model']}"] = float(value)
    return Outcome(res.table, scalars, None, list(res.figures), res.report, time.perf_counter() - t0,
                   res.models)


_EVAL_KEYS = ("layers", "target", "orders", "removal", "n_shuffles", "channel_reduce", "interpolation", "search",
              "select_metric", "test_method")


def _layers_in(label: str, n_layers: int) -> int:
    """How many layers an aggregate candidate spans: activity[L] -> 1, top-k -> k, all+input -> L + 1."""
    if label.startswith("top-"):
        return int(label[4:])
    if label == "all+input":
        return n_layers + 1
    return 1


@runner("evaluate")
def run_evaluate(spec: dict, out: Path, quiet: bool) -> Outcome:
    """grabska2020's decision-flip evaluation. Scalars: ``mean/<metric>/<method>``; activity vs bias over
    layers (``activity_vs_bias_p/<metric>``: one-sided Wilcoxon over images of the per-image mean over
    layers of activity - bias,
    ``layers_activity_better/<metric>``: fraction of layers whose mean favours activity,
    ``layers_activity_wins/<metric>`` / ``layers_bias_wins/<metric>``: layers significant after Holm at 0.05);
    ``best_aggregate_layers``, ``n_layers``; ``best_vs/<role>/p`` and ``best_vs/<role>/favours_best``."""
    import numpy as np

    from sanitas.evaluate import evaluate_methods
    from sanitas.evaluate.stats import wilcoxon_pair

    t0 = time.perf_counter()
    src, net, ds = _data(spec, quiet)
    kw = {k: spec[k] for k in _EVAL_KEYS if k in spec}
    methods = spec.get("methods", ["gradient", "fullgrad", "random"])
    methods = methods if all(isinstance(m, str) for m in methods) else build_methods(methods)
    with model_call(output=src.output):
        res = evaluate_methods(net, ds.x, ds.y, methods,
                               seed=int(spec["seed"]), out=out, resume=True, quiet=quiet, **kw)
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
    return Outcome(res.table, scalars, None, list(res.figures), res.report, time.perf_counter() - t0, summary)


# experiments defined in their own modules register their runners on import
from sanitas.experiments import edges, input_noise, shared_zeros  # noqa: E402,F401
from sanitas.experiments import flip_metrics, zero_bias_resnet  # noqa: E402,F401
