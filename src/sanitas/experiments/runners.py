"""Runners of config entries that need more than their check class's ``run_entry``: config entry in,
:class:`Outcome` (tidy table + named scalars) out. A check class (:mod:`sanitas.checks`) runs its own entries
(:func:`runner_for`); the registry, ``Outcome`` and the shared builders are in
:mod:`sanitas.experiments.runner_base`.

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
                                             build_methods, ceiling_models, check_names, check_options, dataset_of,
                                             model_call, model_label, model_sources, runner, runner_for,
                                             study_outcome)


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
        if spec.get("ceiling_model") is not None:  # an independently trained model the entry names
            from sanitas.models import load_model, model_source

            given = load_model(model_source(spec["ceiling_model"], src.output), dataset_of(spec), quiet=quiet)
            ceilings = [given, *ceilings]
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
        res = model_randomization(net, ds.x, ds.y, methods=build_methods(spec.get("methods")),
                                  metrics=spec.get("metrics", ["spearman_abs", "spearman", "ssim"]), seed=int(spec["seed"]),
                                  out=out, resume=spec.get("resume", True), quiet=quiet,
                                  ceiling_model=ceilings or None, figures=False, **kw)
    # figures and report are drawn once, by _check_outcome, with what the run was about
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


@runner("completeness")
def run_completeness(spec: dict, out: Path, quiet: bool) -> Outcome:
    """Approximate completeness (gupta2019 section 4.1): sum of map vs logit per image across classes, per class
    across images, and pooled. The table holds the per-image fits (metric ``r2_per_image``, ``alpha_per_image``);
    scalars ``r2/...`` (pooled), ``r2_per_image/...`` and ``r2_per_class/...`` (medians)."""
    from sanitas.evaluate import completeness

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
    return study_outcome(out, spec, t0, table, summary, figs, "sanitas: approximate completeness", scalars=scalars,
                         text="Least-squares fits of sum(map_c(x)) = alpha * logit_c(x) + beta: per image "
                              "across its classes (what competition compares), per class across images, "
                              "and over all images and classes at once (gupta2019, section 4.1).")


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


# experiments defined in their own modules register their runners on import
from sanitas.experiments import edges, input_noise, shared_zeros, sum_pool  # noqa: E402,F401
from sanitas.experiments import competition_maps, competition_quality  # noqa: E402,F401
from sanitas.experiments import linear_zero_bias, upsampling  # noqa: E402,F401  (grabska2020 figure 1, B.1, E)
from sanitas.experiments import flip_metrics, zero_bias_resnet  # noqa: E402,F401
