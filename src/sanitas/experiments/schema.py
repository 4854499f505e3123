"""The schema of an experiment config: every key, its type and range, checked before anything runs.

An unknown key (``mdoe: independent``), a value of the wrong type (``images: abc``, ``methods: 5``,
``paper: [1, 2]``), a value that would be coerced (``images: 8.7``) or out of range (``images: 0``,
``seed: -1``) is a :class:`ConfigError` that names the file and the YAML line, before any model is
trained or any map computed. Experiment keys depend on the check (``mode`` belongs to
``model_randomization``, ``n_shuffles`` to ``evaluate``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sanitas.errors import ConfigError, SanitasError
from sanitas.experiments.locations import _Where, yaml_lines  # noqa: F401 - yaml_lines: re-exported

Checker = Callable[[Any, str], None]


# -- value checkers ---------------------------------------------------------------------------------

def _string(value, what):
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} must be a text, got {value!r}")


def _one_of(*choices) -> Checker:
    def check(value, what):
        if value not in choices:
            raise ConfigError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return check


def _flag(value, what):
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {value!r}")


def _validation():
    from sanitas.utils import validation  # imports torch: only when a config is checked

    return validation


def _count(minimum=1) -> Checker:
    return lambda value, what: _validation().count(value, what, minimum=minimum)


def _count_or_all(value, what):
    """A positive count, or ``all`` (e.g. every training image)."""
    if value != "all":
        _validation().count(value, what + " (a positive count, or all)")


def _seed(value, what):
    _validation().seed(value, what)


def _number(**limits) -> Checker:
    return lambda value, what: _validation().real(value, what, **limits)


def _texts(value, what):
    """A text or a list of texts."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{what} must be a name or a non-empty list of names, got {value!r}")
    for v in items:
        _string(v, f"{what} entry")


def _model(value, what):
    """A model spec (:mod:`sanitas.models.spec`): a string or a mapping, or a list of them (biases); its parts are
    read (a reference model's name must exist, a file must be there) without importing or loading anything."""
    for v in (value if isinstance(value, list) else [value]):
        check_model_spec(v, what)


def check_model_spec(value, what: str) -> None:
    from pathlib import Path

    from sanitas.models.spec import SPEC_HELP, model_source

    if not isinstance(value, (str, dict)):
        raise ConfigError(f"{what} must be a model spec ({SPEC_HELP}) or a mapping (class:, weights:, args:, "
                          f"output:), got {value!r}")
    try:
        src = model_source(value)
    except SanitasError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    if src.kind == "name":
        from sanitas.models.resolve import reference_model

        try:
            reference_model(src.target)
        except SanitasError as exc:
            raise ConfigError(f"{what}: {exc}") from None
    for f in src.files():
        if not Path(f).expanduser().exists():
            raise ConfigError(f"{what}: no file or folder at {f} (paths are relative to the folder sanitas runs in)")


def _output(value, what):
    from sanitas.explain.forward import check_output_selector

    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f"{what} must be a key or attribute name (logits) or a position (0), got {value!r}")
    check_output_selector(value)


def _classes(value, what):
    if isinstance(value, str) or not isinstance(value, list) or not value:
        raise ConfigError(f"{what} must be a list of class names (class i = the i-th), got {value!r}")
    for v in value:
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            raise ConfigError(f"{what}: a class name is a text, got {v!r}")
    names = [str(v) for v in value]
    if len(set(names)) != len(names):
        raise ConfigError(f"{what} names a class twice: {names}")


def _dataset(value, what):
    if isinstance(value, dict):
        from sanitas.data import dataset_spec

        try:
            dataset_spec(value)
        except SanitasError as exc:
            raise ConfigError(f"{what}: {exc}") from None
        return
    _string(value, what)


def _names(value, what):
    """Layer names or module prefixes: texts, or numbers (``nn.Sequential`` layers are named 0, 1, ...)."""
    items = value if isinstance(value, list) else [value]
    if isinstance(value, str) or not items:
        _texts(value, what)
        return
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ConfigError(f"{what} must be a name or a list of layer names, got {value!r}")


def _methods(value, what):
    from sanitas.experiments.runners import build_methods

    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{what} must be a list of method names (or one-key mappings name: {{options}}), "
                          f"got {value!r}")
    tokens = ("layers", "aggregates")  # the evaluate check's layer-method tokens
    for v in items:
        if not (isinstance(v, str) or (isinstance(v, dict) and len(v) == 1)):
            raise ConfigError(f"{what}: an entry is a method name or a one-key mapping name: {{options}}, got {v!r}")
        if v in tokens:
            continue
        try:
            build_methods([v])  # unknown names and bad options fail now, not after the other experiments ran
        except SanitasError as exc:
            raise ConfigError(f"{what}: {exc}") from None


def _metrics(value, what):
    from sanitas.similarity import get_similarity

    _texts(value, what)
    for v in [value] if isinstance(value, str) else value:
        try:
            get_similarity(v)
        except SanitasError as exc:
            raise ConfigError(f"{what}: {exc}") from None


def _inits(value, what):
    """An init scheme's name, or a list of them (the test then runs once per scheme)."""
    from sanitas.randomize.init import INIT_SCHEMES

    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{what} must be an init scheme ({', '.join(INIT_SCHEMES.names())}) or a list of them, "
                          f"got {value!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{what} names a scheme twice: {items}")
    for v in items:
        try:
            INIT_SCHEMES.get(v)
        except SanitasError as exc:
            raise ConfigError(f"{what}: {exc}") from None


def _fractions(value, what):
    """A non-empty list of fractions in [0, 1)."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{what} must be a list of fractions in [0, 1), got {value!r}")
    for v in value:
        _validation().real(v, f"{what} entry", minimum=0)
        if v >= 1:
            raise ConfigError(f"{what}: a fraction must be below 1 (two all-zero maps have no ranking), got {v!r}")


def _detectors(value, what):
    """Model-free edge detectors of :mod:`sanitas.explain.controls` (``sobel``, ``canny``)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or any(v not in ("sobel", "canny") for v in items):
        raise ConfigError(f"{what} must be a list of edge detectors (sobel, canny), got {value!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{what} names a detector twice: {items}")


def _positives(value, what):
    """A non-empty list of numbers above 0."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{what} must be a list of numbers above 0, got {value!r}")
    for v in value:
        _validation().real(v, f"{what} entry", above=0)


def _distributions(value, what):
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or any(v not in ("gaussian", "uniform") for v in items):
        raise ConfigError(f"{what} must be a list of gaussian, uniform; got {value!r}")


def _class_counts(value, what):
    """A non-empty list of class counts (whole numbers >= 2)."""
    for v in value if isinstance(value, list) and value else [value]:
        _validation().count(v, f"{what} (a list of class counts >= 2) entry", minimum=2)


def _mapping(value, what):
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping, got {value!r}")


def _skip(value, what):
    if not isinstance(value, (str, bool)):
        raise ConfigError(f"{what} must be a reason (text) or true/false, got {value!r}")


#: what ``training:`` may set for the models a study trains (see :func:`sanitas.models.train.training_defaults`)
TRAINING_KEYS = ("train_size",)


def _training(value, what):
    _mapping(value, what)
    unknown = sorted(set(value) - set(TRAINING_KEYS))
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {unknown}; training takes {list(TRAINING_KEYS)} (e.g. "
                          "{train_size: 12000}: every model the study trains sees a seeded subset of 12,000 images)")
    if "train_size" in value:
        _count()(value["train_size"], f"{what}: train_size")


def _distill(value, what):
    if not isinstance(value, bool):
        _texts(value, what)


# -- the schema ---------------------------------------------------------------------------------------

COMMON: dict[str, Checker] = {
    "check": _string, "model": _model, "dataset": _dataset, "images": _count(), "seed": _seed, "methods": _methods,
    "metrics": _metrics, "description": _string, "skip": _skip, "output": _output, "classes": _classes,
    "resume": _flag, "training": _training,
}
#: the options of config entries that are not check classes (a check class declares its own ``options``)
BY_CHECK: dict[str, dict[str, Checker]] = {
    "input_noise": {"noise": _positives, "distributions": _distributions, "samples": _count()},
    "edge_detectors": {"detectors": _detectors, "edge_input": _flag},
    "shared_zeros": {"fractions": _fractions, "samples": _count(minimum=2), "baseline": _number(), "init": _string,
                     "draws": _count()},
    "sum_pool_conv": {"filters": _count(), "kernel": _count(), "detector": _one_of("sobel", "canny")},
    "zero_bias_resnet": {"n_shuffles": _count(minimum=1), "layers": _names, "distill_options": _mapping,
                         "epochs": _count(), "train_size": _count()},
    "flip_metrics": {"n_shuffles": _count(minimum=1), "layers": _names, "epochs": _count(), "train_size": _count()},
    "completeness": {},
    "competition_all_logits": {}, "competition_scores": {}, "competition_quality": {"n_shuffles": _count()},
    "competition_random_net": {"init": _string, "classes_compared": _class_counts},
    "input_robustness": {"scales": _positives, "shifts": _positives, "linear": _flag},
    "upsampling": {"against": _one_of("nearest", "bicubic"), "n_shuffles": _count(), "fullgrad": _flag},
    "biases": {"distill": _distill, "distill_options": _mapping, "accuracy_images": _count()},
}
TOP: dict[str, Checker] = {
    "paper": _string, "title": _string, "reference": _string, "description": _string, "dataset": _dataset,
    "classes": _classes, "seed": _seed, "images": _count(), "experiments": _mapping, "claims": lambda v, w: None,
    "quick": _mapping, "draws": _count(), "model_seeds": _count(), "training": _training,
}
QUICK_TOP = {"title", "description", "dataset", "classes", "seed", "images", "experiments", "draws", "model_seeds",
             "training"}
#: checks that run without a model
MODEL_FREE = ("calibration", "input_noise", "sum_pool_conv")
#: the model_randomization modes that draw each randomized stage several times (``draws``)
DRAW_MODES = ("cascading", "independent", "smooth")


def _check_experiment(exp: dict, check: str, where: _Where, path: tuple, partial: bool = False) -> None:
    from sanitas.experiments.runner_base import check_options

    allowed = {**COMMON, **check_options(check)}
    for key, value in exp.items():
        at = where(*path, key)
        if key not in allowed:
            import difflib

            near = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{at}: experiment {path[-1]!r}: unknown key {key!r}{hint}; a {check} experiment "
                              f"takes {sorted(allowed)}")
        allowed[key](value, f"{at}: experiment {path[-1]!r}: {key}")
    mode = exp.get("mode", "cascading")
    if check == "model_randomization" and exp.get("draws", 1) > 1 and mode not in DRAW_MODES:
        raise ConfigError(f"{where(*path, 'draws')}: experiment {path[-1]!r}: draws applies to the "
                          f"{', '.join(DRAW_MODES)} modes, not to {mode!r}")
    if not partial and "model" not in exp and check not in MODEL_FREE:
        raise ConfigError(f"{where(*path)}: experiment {path[-1]!r} needs a 'model'")


def check_config(cfg: Any, source: str = "config", lines: dict[tuple[str, ...], int] | None = None) -> None:
    """Validate a parsed config against the schema; ``lines`` (from :func:`yaml_lines`) adds line numbers."""
    from sanitas.experiments.claims import validate_claim
    from sanitas.experiments.runners import check_names

    checks = check_names()

    where = _Where(source, lines)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with 'paper' and 'experiments'")
    unknown = set(cfg) - set(TOP)
    if unknown:
        first = min(unknown, key=str)
        raise ConfigError(f"{where(first)}: unknown top-level key(s) {sorted(map(str, unknown))}; allowed: "
                          f"{sorted(TOP)}")
    for key in ("paper", "experiments"):
        if key not in cfg:
            raise ConfigError(f"{source}: missing required key {key!r}")
    for key, value in cfg.items():
        TOP[key](value, f"{where(key)}: {key}")
    exps = cfg["experiments"]
    if not exps:
        raise ConfigError(f"{where('experiments')}: 'experiments' must be a non-empty mapping of name -> experiment")
    for name, exp in exps.items():
        if not isinstance(exp, dict) or "check" not in exp:
            raise ConfigError(f"{where('experiments', name)}: experiment {name!r} needs a 'check' (one of "
                              f"{checks})")
        if exp["check"] not in checks:
            raise ConfigError(f"{where('experiments', name, 'check')}: experiment {name!r}: unknown check "
                              f"{exp['check']!r}; use one of {checks}")
        _check_experiment(exp, exp["check"], where, ("experiments", name))
    claims = cfg.get("claims") or []
    if not isinstance(claims, list):
        raise ConfigError(f"{where('claims')}: 'claims' must be a list of claims")
    for i, claim in enumerate(claims):
        try:
            validate_claim(claim, exps, f"claim {i + 1}")
        except ConfigError as exc:
            raise ConfigError(f"{where('claims', i)}: {exc}") from None
    quick = cfg.get("quick") or {}
    for key, value in quick.items():
        if key not in QUICK_TOP:
            raise ConfigError(f"{where('quick', key)}: quick: unknown key {key!r}; it overrides {sorted(QUICK_TOP)}")
        if key != "experiments":
            TOP[key](value, f"{where('quick', key)}: quick: {key}")
    overrides = quick.get("experiments") or {}
    _mapping(overrides, f"{where('quick', 'experiments')}: quick: experiments")
    for name, over in overrides.items():
        if name not in exps:
            raise ConfigError(f"{where('quick', 'experiments', name)}: quick overrides unknown experiment {name!r}")
        _mapping(over, f"{where('quick', 'experiments', name)}: quick: experiment {name!r}")
        check = over.get("check", exps[name]["check"])
        if check not in checks:
            raise ConfigError(f"{where('quick', 'experiments', name, 'check')}: unknown check {check!r}")
        _check_experiment(over, check, where, ("quick", "experiments", name), partial=True)
