"""Data randomization test (adebayo2018, section 4) and the input invariance test (Kindermans et al. 2017).

Both compare explanations of the same images on two models through the engine:

* ``data_randomization``: the model trained on the true labels vs the same architecture trained on
  permuted labels, with an optional *model-seed ceiling*: a second true-label model trained with
  another seed. A method passes only when true-vs-permuted similarity is clearly below the ceiling
  (the bootstrap CIs do not overlap).
* ``input_invariance``: a second model that computes exactly the same logits on ``x + c`` as the
  first on ``x`` (the first layer's bias absorbs the shift); explanations of ``x`` on the first and of
  ``x + c`` on the second should be equal for an input-invariant method.

Both are written as every check is (issue 19's one pipeline; this module is the worked example).
A check writes three things and leaves the loop to :func:`sanitas.engine.run`:

1. its *variants*, the models whose maps are compared with the reference model's:
   ``engine.Variant(name, index, model)``, index 0 being the reference model itself (its cell is the
   reference maps). A variant explained on other inputs or with a changed method says so:
   ``Variant(..., inputs=x + c, adapt=lambda e: _shift_baseline(e, c))`` (``input_invariance`` below);
2. its *target rule*: the class explained for the reference (``reference_target``) and for each variant
   (``target_for(variant)``); here the true labels ``y`` for every model;
3. the call: ``engine.run(reference, variants, x, explainers, metrics, target_for, store,
   reference_target, refused=..., executor=...)`` inside ``with engine.CellStore(out, config)``, with the
   executor from :func:`sanitas.executors.executor_scope`; then a :class:`CheckResult` of the table and
   ``engine.write_outputs`` (:func:`_run_variants` does this part for both checks here).

Validation (``check_batch``), methods and metrics (``resolve_methods``, ``resolve_metrics``) and the
calibration are shared helpers. The engine computes each (variant, method) cell once, resumes finished
ones, leaves out a method that cannot explain a model (``meta["refused"]``), marks constant and
degenerate maps, shows progress, and runs the cells here or on a Ray cluster (``executor=`` or a
:func:`~sanitas.executors.use_executor` block).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sanitas import engine
from sanitas.checks.model_randomization import (check_batch, describe_methods, resolve_methods, resolve_metrics,
                                                warn_degenerate)
from sanitas.checks.result import CheckResult, model_facts, summarize_table
from sanitas.errors import InputError, ModelError
from sanitas.executors import executor_scope
from sanitas.explain._core import model_device
from sanitas.explain.forward import model_call
from sanitas.utils import validation
from sanitas.utils.forward import inference_logits, untouched
from sanitas.utils.hashing import model_fingerprint, tensor_digest


def _same_classes(models: list[tuple[str, nn.Module]], x: torch.Tensor) -> None:
    """Models compared on the same images must have the same classes (a 5-class head is not a 10-class one)."""
    counts = {name: inference_logits(m, x[:1].to(model_device(m))).shape[1] for name, m in models}
    if len(set(counts.values())) > 1:
        raise ModelError(f"the compared models have different numbers of classes {counts}; compare models of "
                         "the same task (same classes, same label order)")


def _prepare(models: list[tuple[str, nn.Module]], x, y):
    """The images on the first model's device and their labels, once every model is known to fit them."""
    for name, m in models:
        if not isinstance(m, nn.Module):
            raise InputError(f"the {name} model must be a torch.nn.Module, got {type(m).__name__}")
    x, y = check_batch(models[0][1], x, y)
    _same_classes(models, x)
    return x, y


def _run_variants(kind: str, variants: list[engine.Variant], x, y, methods, metrics, out=None, resume=True,
                  calibrate=True, seed=0, show=8, quiet=None, extra_config=None, extra_meta=None,
                  executor=None) -> CheckResult:
    """Compare every variant's maps with those of ``variants[0]`` (the reference model on ``x``) through
    :func:`sanitas.engine.run`; each model explains the true labels ``y``."""
    seed = validation.seed(seed)
    show = validation.count(show, "show", minimum=0)
    explainers = resolve_methods(methods)
    sims = resolve_metrics(metrics)
    reference = variants[0].model
    t0 = time.perf_counter()
    config = {"check": kind, "methods": {k: repr(e) for k, e in explainers.items()}, "metrics": list(sims),
              "images": tensor_digest(x), "models": [(v.name, model_fingerprint(v.model)) for v in variants],
              **(extra_config or {})}
    cal, cal_seconds = None, 0.0
    if calibrate:  # first: a metric it cannot calibrate fails before any cell is computed
        from sanitas.similarity.calibration import calibrate as run_cal

        k = inference_logits(reference, x[:1]).shape[1]
        cal = run_cal(list(sims.values()), x=x, seed=seed, classes=k if k > 1 else None)
        cal_seconds = time.perf_counter() - t0
    refused: dict[str, str] = {}
    with executor_scope(executor) as ex, engine.CellStore(out, config, resume=resume) as store:
        table, shown, timings = engine.run(reference, variants, x, explainers, sims, lambda v: y, store, y,
                                           show=show, quiet=quiet, total=len(variants), refused=refused,
                                           executor=ex)
        if calibrate:
            timings["calibration"] = cal_seconds
        timings["total"] = time.perf_counter() - t0
        facts = {v.name: model_facts(v.model, x if v.inputs is None else v.inputs, y) for v in variants}
        meta = {"config": config, "versions": engine.versions(), "timings": timings, "seed": seed,
                "stages": [v.name for v in variants], "models": facts,
                "accuracy": {name: f["accuracy"] for name, f in facts.items()}, "refused": refused,
                "resolved": describe_methods(explainers, reference, x, refused), **(extra_meta or {})}
        res = CheckResult(kind, table, cal, meta, shown, x[:show].cpu(), [v.name for v in variants],
                          Path(out) if out else None)
        warn_degenerate(res, None)
        if out:
            engine.write_outputs(Path(out), table, meta, cal, images=x[:show])
    return res


def data_randomization(model_true: nn.Module, model_random: nn.Module, x, y, methods,
                       metrics=("spearman_abs", "spearman", "ssim"), ceiling_model: nn.Module | None = None,
                       out=None, resume: bool = True, calibrate: bool = True, seed: int = 0,
                       quiet=None, output=None, executor=None) -> CheckResult:
    """True-label model vs permuted-label model (and vs another seed: the ceiling) on the same images.

    :func:`train_for_data_randomization` trains the permuted-label model (and the ceiling) of any architecture.
    ``output`` picks the logits from what the models return (see :func:`sanitas.explain.forward.select_logits`).
    A method that cannot explain the models is left out, with its reason in ``result.meta["refused"]``.
    ``executor``: where the cells run, as in :func:`~sanitas.checks.model_randomization` (``None``: the enclosing
    :func:`~sanitas.executors.use_executor` block, else here).
    """
    models = [("true_labels", model_true), ("permuted_labels", model_random)]
    if ceiling_model is not None:
        models.append(("other_seed", ceiling_model))
    with model_call(output=output):
        x, y = _prepare(models, x, y)
        variants = [engine.Variant(name, i, m) for i, (name, m) in enumerate(models)]
        return _run_variants("data_randomization", variants, x, y, methods, metrics, out=out, resume=resume,
                             calibrate=calibrate, seed=seed, quiet=quiet, executor=executor)


@dataclass
class DataRandomizationModels:
    """The models :func:`train_for_data_randomization` trained: the permuted-label one (a
    :class:`~sanitas.models.TrainedModel`), the ceiling (or None) and what each is, in words (``notes``)."""

    permuted: Any
    ceiling: nn.Module | None
    notes: dict[str, str]


def train_for_data_randomization(model, dataset, *, seed: int = 0, train_size: int | None = 2000,
                                 epochs: int = 100, lr: float = 3e-4, target_accuracy: float | None = 0.95,
                                 ceiling: bool = True, quiet=None) -> DataRandomizationModels:
    """Train the architecture of ``model`` (any model spec: a reference model's name, a class, a pickled module,
    a Hugging Face directory; :mod:`sanitas.models.spec`) from a fresh initialisation on permuted labels of
    ``dataset`` (``train_size`` examples, until ``target_accuracy`` on them or ``epochs``), and, with
    ``ceiling``, on the true labels with seed ``seed + 1`` (sanitas' training loop: Adam, cosine schedule)."""
    from sanitas.models import model_source, train

    src = model_source(model)
    perm = train(src, dataset, "permuted", seed=seed, train_size=train_size, epochs=epochs, lr=lr,
                 target_accuracy=target_accuracy, quiet=quiet)
    notes = {"permuted_labels": f"the architecture of {src.describe()}, freshly initialised and trained on "
                                f"permuted labels of {perm.config['dataset']} by sanitas",
             "true_labels": (f"{src.describe()} as given" if src.has_weights else
                             f"{src.describe()} trained on the true labels by sanitas (seed {seed})")}
    ceiling_model = None
    if ceiling:
        ceiling_model = train(src, dataset, seed=seed + 1, quiet=quiet).model
        notes["other_seed"] = (f"the same architecture trained on the true labels by sanitas with seed {seed + 1}"
                               + (" (your model's own training recipe is not known to sanitas)" if src.has_weights
                                  else ""))
    return DataRandomizationModels(perm, ceiling_model, notes)


def ceiling_verdicts(result: CheckResult) -> pd.DataFrame:
    """Per method and metric: passes when the true-vs-permuted CI lies below the model-seed ceiling's CI."""
    s = summarize_table(result.table)
    perm = s[s["variant"] == "permuted_labels"].set_index(["method", "metric"])
    ceil = s[s["variant"] == "other_seed"].set_index(["method", "metric"])
    rows = []
    for key, r in perm.iterrows():
        c = ceil.loc[key] if key in ceil.index else None
        passes = bool(c is not None and r["ci_high"] < c["ci_low"])
        rows.append({"method": key[0], "metric": key[1], "permuted": r["mean"], "permuted_ci_high": r["ci_high"],
                     "ceiling": None if c is None else c["mean"], "ceiling_ci_low": None if c is None else c["ci_low"],
                     "passes": passes})
    return pd.DataFrame(rows)


class _ShiftCompensated(nn.Module):
    """Wraps a model's first layer so that ``layer(x + c) - offset == layer(x)`` exactly (zero padding too)."""

    def __init__(self, layer: nn.Module, offset: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.register_buffer("offset", offset)

    def forward(self, x):
        return self.layer(x) - self.offset


def shifted_model(model: nn.Module, x: torch.Tensor, shift: float) -> nn.Module:
    """A copy of ``model`` whose logits on ``x + shift`` equal the original's on ``x``.

    The first parameterized layer (Conv2d or Linear) gets the compensation ``layer(c) - layer(0)``
    subtracted, a constant (a bias; spatially varying where zero padding meets the border).
    """
    from sanitas.randomize import discover_layers

    first = discover_layers(model, x[:1])[0]
    twin = copy.deepcopy(model)
    parent_name, _, attr = first.name.rpartition(".")
    parent = twin.get_submodule(parent_name) if parent_name else twin
    layer = getattr(parent, attr)
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise ModelError(f"input invariance needs a Conv2d or Linear first layer; {first.name} is {first.type}")
    seen = []
    handle = layer.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    try:
        with untouched(twin):  # the first layer's own input for a zero and a shifted image
            zero = torch.zeros_like(x[:1])
            twin(zero)
            twin(zero + shift)
            offset = (layer(seen[1]) - layer(seen[0]))[0]
    finally:
        handle.remove()
    setattr(parent, attr, _ShiftCompensated(layer, offset))
    return twin


def input_invariance(model: nn.Module, x, y, methods, metrics=("spearman_abs", "spearman", "ssim"),
                     shift: float = 1.0, shift_baselines: bool = False, out=None, resume: bool = True,
                     calibrate: bool = False, seed: int = 0, quiet=None, output=None, executor=None) -> CheckResult:
    """Kindermans et al.: explain ``x`` on the model and ``x + shift`` on its shift-compensated twin.

    ``shift_baselines=True`` moves the baseline of baseline methods (IG, DeepLIFT) by the same shift
    on the twin, the fix Kindermans et al. describe; otherwise both use the same baseline. A method that
    cannot explain the model is left out (``result.meta["refused"]``); ``executor`` as in :func:`data_randomization`.
    """
    shift = validation.real(shift, "shift")
    with model_call(output=output):
        x, y = check_batch(model, x, y)
        twin = shifted_model(model, x, shift)  # the same classes by construction
        gap = float((inference_logits(model, x) - inference_logits(twin, x + shift)).abs().max())
        variants = [engine.Variant("original", 0, model),
                    engine.Variant(f"shifted_by_{shift:g}", 1, twin, inputs=x + shift,
                                   adapt=(lambda e: _shift_baseline(e, shift)) if shift_baselines else None)]
        return _run_variants("input_invariance", variants, x, y, methods, metrics, out=out, resume=resume,
                             calibrate=calibrate, seed=seed, quiet=quiet, executor=executor,
                             extra_config={"shift": shift, "shift_baselines": shift_baselines},
                             extra_meta={"max_logit_difference": gap})


def _shift_baseline(explainer, shift: float):
    """The same method with its (constant) baseline moved by ``shift``; methods without one unchanged."""
    if "baseline" not in getattr(explainer, "defaults", {}):
        return explainer
    base = explainer.baseline
    if base is None or (isinstance(base, str) and base in ("zero", "zeros", "black")):
        base = 0.0
    if not isinstance(base, (int, float)):
        raise ModelError(f"shift_baselines needs a constant baseline; {explainer!r} has {base!r}")
    return type(explainer)(**{**explainer.options, "baseline": float(base) + shift})
