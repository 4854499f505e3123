"""What every experiment runner shares: the :class:`Outcome` it returns, the registry of runners by
check kind, and how a config entry's methods, dataset, model and ceiling models are built."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from sanitas.errors import ConfigError


def model_call(output=None):
    """:func:`sanitas.explain.forward.model_call` (imported when an experiment runs: it needs torch)."""
    from sanitas.explain.forward import model_call as call

    return call(output=output)


@dataclass
class Outcome:
    """What one experiment produced: its tidy table, named scalars, calibration and figures."""

    table: pd.DataFrame
    scalars: dict[str, float] = field(default_factory=dict)
    calibration: pd.DataFrame | None = None
    figures: list[Path] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0
    summary: pd.DataFrame | None = None   # compact table shown in the combined report
    result: Any = None                    # the check's result object (CheckResult, QualityResult), when a check ran


RUNNERS: dict[str, Callable[[dict, Path, bool], Outcome]] = {}


def runner(kind: str):
    """Register ``fn(spec, out, quiet) -> Outcome`` as what runs a config entry ``check: kind`` (an experiment
    that is not a check; a check class of :mod:`sanitas.checks` is found by its name without this)."""
    def deco(fn):
        RUNNERS[kind] = fn
        return fn
    return deco


#: older names of checks, still accepted in configs
CHECK_ALIASES = {"evaluate": "quality"}


def runner_for(kind: str) -> Callable[[dict, Path, bool], Outcome]:
    """What runs a config entry ``check: kind``: a registered runner, else the check class's ``run_entry``."""
    kind = CHECK_ALIASES.get(kind, kind)
    if kind in RUNNERS:
        return RUNNERS[kind]
    checks = _check_classes()
    if kind in checks:
        return checks[kind].run_entry
    raise ConfigError(f"unknown check {kind!r}; use one of {check_names()}")


def _check_classes() -> dict:
    import sanitas.evaluate.quality  # noqa: F401 - registers the quality check
    from sanitas.checks import CHECKS

    return CHECKS


def check_names() -> list[str]:
    """Every name a config's ``check:`` may take."""
    return sorted({*RUNNERS, *_check_classes(), *CHECK_ALIASES})


def check_options(kind: str) -> dict[str, Callable]:
    """The config keys a ``check: kind`` entry takes besides the common ones (key -> schema checker)."""
    from sanitas.experiments.schema import BY_CHECK

    kind = CHECK_ALIASES.get(kind, kind)
    checks = _check_classes()
    return BY_CHECK[kind] if kind in BY_CHECK else dict(checks[kind].options) if kind in checks else {}


def build_methods(entries) -> dict[str, Any]:
    """Config method entries -> ``{display name: Explainer}``.

    An entry is a name (``gradient``, ``competitive(input_x_gradient)``) or a one-key mapping
    ``{name: {option: value}}``; for a wrapped name the options go to the inner method
    (``{"competitive(dasp)": {n_sizes: 8}}``), and ``wrapper: {...}`` holds the wrapper's own.
    """
    from sanitas.explain import get_explainer
    from sanitas.explain.registry import WRAPPERS, EXPLAINERS, parse_method

    if isinstance(entries, str):
        entries = [entries]
    out = {}
    for entry in entries or []:
        if isinstance(entry, str):
            out[entry] = get_explainer(entry)
            continue
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(f"a method entry is a name or a one-key mapping {{name: {{options}}}}, got {entry!r}")
        (name, options), = entry.items()
        options = dict(options or {})
        outer, inner, named = parse_method(name)
        if inner is not None and EXPLAINERS.canonical(outer) in WRAPPERS:
            wrapper_opts = {**named, **(options.pop("wrapper", {}) or {})}
            out[name] = get_explainer(outer, base=get_explainer(inner, **options), **wrapper_opts)
        else:
            out[name] = get_explainer(name, **options)
    if not out:
        raise ConfigError("an experiment needs at least one method")
    return out


def dataset_of(spec: dict):
    """An experiment's dataset, with its ``classes:`` order when given (a dataset mapping)."""
    dataset, classes = spec["dataset"], spec.get("classes")
    if classes is None:
        return dataset
    from sanitas.data import DATASETS, dataset_spec

    if isinstance(dataset, dict):
        name, options = dataset_spec(dataset)
        if options.get("classes") not in (None, [str(c) for c in classes]):
            raise ConfigError(f"the experiment's classes {classes} and its dataset's classes {options['classes']} "
                              "differ; give them once")
        return {**dataset, "classes": list(classes)}
    return {"name" if dataset in DATASETS else "path": dataset, "classes": list(classes)}


def model_sources(spec: dict) -> list:
    """The experiment's model spec(s) (:mod:`sanitas.models.spec`) with its ``output:``, parsed, not loaded."""
    from sanitas.models import model_source

    models = spec["model"] if isinstance(spec["model"], list) else [spec["model"]]
    return [model_source(m, spec.get("output")) for m in models]


def model_label(spec: dict) -> str:
    """The experiment's model(s) as written in the config, for titles and log lines."""
    from sanitas.errors import SanitasError

    if spec.get("model") is None:
        return "no model"
    try:
        return ", ".join(src.spec_string() for src in model_sources(spec))
    except SanitasError:  # a stored config of an older sanitas: shown as written
        return str(spec.get("model"))


def _images(spec: dict):
    """The experiment's test images: a seeded sample of ``images`` of them (all when there are fewer)."""
    from sanitas.data import load_dataset

    ds = load_dataset(dataset_of(spec), "test")
    n = int(spec["images"])
    return ds.sample(n, seed=int(spec["seed"])) if n < len(ds) else ds


def _data(spec: dict, quiet: bool, needs_layers: str | None = None, **train_kwargs):
    from sanitas.models import load_model
    from sanitas.models.resolve import require_python_module

    from sanitas.utils.progress import log

    src = model_sources(spec)[0]
    with model_call(output=src.output):
        net = load_model(src, dataset_of(spec), quiet=quiet, **train_kwargs)
    if needs_layers:
        require_python_module(net, needs_layers)
    ds = _images(spec)
    log(f"model: {src.describe()}", quiet=quiet)
    log(f"data:  {ds.describe()}", quiet=quiet)
    if ds.info.get("layout"):
        log(f"       {ds.info['layout']}", quiet=quiet)
    return src, net, ds


def _check_outcome(res, out: Path, t0: float, scalars=None, about=None) -> Outcome:
    """A check result as an experiment's Outcome; with ``about`` (what the run was about, when the check was
    called without it) the report is written again with it. A result without a report gets one here."""
    from sanitas.report.about import annotate
    from sanitas.report.figures import check_figures
    from sanitas.report.html import check_report

    if about is not None:
        annotate(res, out, about)
    if not res.figures:
        res.figures = check_figures(res, out)
    if about is not None or res.report is None:
        res.report = check_report(res, out, res.figures)
    summary = res.summary()
    return Outcome(res.table, dict(scalars or {}), res.calibration, list(res.figures), res.report,
                   time.perf_counter() - t0, summary, res)


def study_outcome(out: Path, spec: dict, t0: float, table: pd.DataFrame, summary: pd.DataFrame, figures: list,
                  title: str, text: str, scalars: dict | None = None, meta: dict | None = None,
                  calibration: pd.DataFrame | None = None) -> Outcome:
    """How an experiment that is not a check ends: its results files and meta.json (``meta``: entries besides
    the config, versions and time), a report of its summary and figures (``title``, ``text``: what it shows),
    and its Outcome."""
    from sanitas.engine import write_outputs
    from sanitas.report.html import check_report_simple
    from sanitas.utils.versions import versions

    meta = {"config": spec, "versions": versions(), **(meta or {}), "timings": {"total": time.perf_counter() - t0}}
    write_outputs(out, table, meta, calibration)
    report = check_report_simple(out, title, summary, figures, meta, text)
    return Outcome(table, dict(scalars or {}), calibration, list(figures), report, time.perf_counter() - t0,
                   summary)


def run_entry(check: str, spec: dict, out: Path, quiet: bool, where: str = "command line") -> Outcome:
    """One config entry (``check: NAME`` and its keys, as in an experiment of a config), validated like a
    config's and run by what runs it in ``sanitas run``: how every check command runs."""
    from sanitas.experiments.schema import _check_experiment, _Where

    spec = {"check": check, **{k: v for k, v in spec.items() if v is not None}}
    _check_experiment(spec, check, _Where(where, None), (check,))
    return runner_for(check)(spec, Path(out), quiet)


def ceiling_models(src, dataset, model_seeds: int, seed: int, quiet: bool) -> list:
    """The ceiling of a randomization's verdicts: the experiment's architecture trained with the seeds
    ``seed + 1 .. seed + model_seeds - 1`` (``model_seeds: 1``: none). The same models ``sanitas randomize
    --model-seeds`` trains, and the first is the data randomization test's ``other_seed`` model."""
    from sanitas.models import train
    from sanitas.utils.progress import log

    models = []
    for k in range(1, int(model_seeds)):
        log(f"ceiling: {src.describe()} trained with seed {seed + k}", quiet=quiet)
        models.append(train(src, dataset, seed=seed + k, quiet=quiet).model)
    return models
