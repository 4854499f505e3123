"""Data randomization test (adebayo2018, section 4): the model trained on the true labels vs the same
architecture trained on permuted labels (which can only memorize), with an optional *model-seed ceiling*: a
second true-label model trained with another seed. A method passes only when true-vs-permuted similarity is
clearly below the ceiling, by at least the smallest effect (``result.verdicts()``, :mod:`sanitas.check_verdicts`).

A check of :mod:`sanitas.checks.base`: :class:`DataRandomization` gives the variants (the true-label model,
the permuted-label one, the ceiling) and :meth:`DataRandomization.run_entry` trains the permuted-label
model of a config entry's architecture first.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sanitas import engine
from sanitas.checks.base import Check, legacy_positional
from sanitas.checks.result import CheckResult, model_facts
from sanitas.errors import InputError, ModelError
from sanitas.experiments.schema import _count, _count_or_all, _flag, _number
from sanitas.explain._core import model_device
from sanitas.utils.forward import inference_logits
from sanitas.utils.hashing import model_fingerprint


def _same_classes(models: list[tuple[str, nn.Module]], x: torch.Tensor) -> None:
    """Models compared on the same images must have the same classes (a 5-class head is not a 10-class one)."""
    counts = {name: inference_logits(m, x[:1].to(model_device(m))).shape[1] for name, m in models}
    if len(set(counts.values())) > 1:
        raise ModelError(f"the compared models have different numbers of classes {counts}; compare models of "
                         "the same task (same classes, same label order)")


class DataRandomization(Check):
    """The true-label ``model`` vs ``permuted_model`` (and vs ``ceiling_model``, another seed) on the same images;
    every model explains the labels ``y``."""

    name = "data_randomization"
    options = {"train_size": _count_or_all, "epochs": _count(), "lr": _number(above=0),
               "target_accuracy": _number(above=0, maximum=1), "ceiling": _flag}
    reading = ("Each number is the similarity between a method's map of the model trained on the true labels and its "
               "map of the same architecture trained on permuted labels (which can only memorize). A method that "
               "explains what the model learned gives different maps; the model trained with another seed "
               "(other_seed) shows how similar two equally good models' maps are: the permuted-label similarity must "
               "fall clearly below it.")

    def __init__(self, model, x, y=None, *, permuted_model: nn.Module, ceiling_model: nn.Module | None = None,
                 **common):
        super().__init__(model, x, y, **common)
        self.models = [("true_labels", model), ("permuted_labels", permuted_model)]
        if ceiling_model is not None:
            self.models.append(("other_seed", ceiling_model))

    def prepare(self) -> None:
        for name, m in self.models:
            if not isinstance(m, nn.Module):
                raise InputError(f"the {name} model must be a torch.nn.Module, got {type(m).__name__}")
        super().prepare()
        _same_classes(self.models, self.x)

    def targets(self):
        return self.y, (lambda v: self.y)

    def variants(self):
        for i, (name, m) in enumerate(self.models):
            yield engine.Variant(name, i, m)

    def total(self) -> int:
        return len(self.models)

    def config(self) -> dict:
        return {"models": [(name, model_fingerprint(m)) for name, m in self.models]}

    def meta(self, meta: dict) -> dict:
        facts = {name: model_facts(m, self.x, self.y) for name, m in self.models}
        return {"models": facts, "accuracy": {name: f["accuracy"] for name, f in facts.items()},
                # its maps are the ceiling result.verdicts() judges the permuted-label model's against
                "ceiling_variants": ["other_seed"] if len(self.models) > 2 else []}

    @classmethod
    def run_entry(cls, spec: dict, out: Path, quiet: bool):
        """A config entry: train the permuted-label model (and the ceiling) of the entry's architecture, then run."""
        from sanitas.experiments.runner_base import _check_outcome, _data, dataset_of, model_call
        from sanitas.report.about import about_run

        t0 = time.perf_counter()
        seed = int(spec["seed"])
        src, true_model, ds = _data(spec, quiet, "data randomization (training its architecture afresh)", seed=seed)
        train_size = spec.get("train_size", 2000)   # "all": the paper's protocol, every training image
        with model_call(output=src.output):
            trio = train_for_data_randomization(src, dataset_of(spec), seed=seed,
                                                train_size=None if train_size == "all" else train_size,
                                                epochs=spec.get("epochs", 100),
                                                lr=spec.get("lr", 3e-4), target_accuracy=spec.get("target_accuracy",
                                                                                                  0.95),
                                                ceiling=spec.get("ceiling", True), quiet=quiet)
            check = cls.from_spec({k: v for k, v in spec.items() if k not in cls.options}, true_model, ds.x, ds.y,
                                  out, quiet, permuted_model=trio.permuted.model, ceiling_model=trio.ceiling)
            res = check.run()
            true_accuracy = _test_accuracy(src, true_model, dataset_of(spec), seed, quiet)
            k = inference_logits(true_model, ds.x[:1]).shape[1]
        pm = trio.permuted.metrics
        res.meta["permuted_training"] = pm
        res.meta["training"] = trio.notes
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


def data_randomization(model: nn.Module, x, y=None, *args, permuted_model: nn.Module | None = None, methods=None,
                       metrics=DataRandomization.default_metrics, ceiling_model: nn.Module | None = None,
                       target=None, seed: int = 0, out=None, quiet=None, resume: bool = True, calibrate: bool = True,
                       output=None, executor=None, figures: bool = True) -> CheckResult:
    """Run :class:`DataRandomization`: ``data_randomization(model, x, y, permuted_model=..., methods=[...])``.

    :func:`train_for_data_randomization` trains the permuted-label model (and the ceiling) of any architecture.
    ``output`` picks the logits from what the models return (see :func:`sanitas.explain.forward.select_logits`).
    A method that cannot explain the models is left out, with its reason in ``result.meta["refused"]``.
    ``executor``: where the cells run, as in :func:`~sanitas.checks.model_randomization` (``None``: the enclosing
    :func:`~sanitas.executors.use_executor` block, else here). The older order
    ``data_randomization(model_true, model_random, x, y, methods, metrics)`` still works, with a FutureWarning.
    """
    if isinstance(x, nn.Module):  # data_randomization(model_true, model_random, x, y, methods, metrics, ...)
        warnings.warn("data_randomization(model_true, model_random, x, y, methods, metrics) is deprecated: use "
                      "data_randomization(model_true, x, y, permuted_model=model_random, methods=..., metrics=...)",
                      FutureWarning, stacklevel=2)
        permuted_model, x, y, args = x, y, args[0] if args else None, args[1:]
        legacy = dict(zip(("methods", "metrics"), args))
    else:
        legacy = legacy_positional("data_randomization", args, ("methods", "metrics"))
    if permuted_model is None:
        raise InputError("data_randomization needs permuted_model= (the same architecture trained on permuted labels; "
                         "train_for_data_randomization trains it)")
    kw = {"methods": methods, "metrics": metrics, **legacy}
    return DataRandomization(model, x, y, permuted_model=permuted_model, ceiling_model=ceiling_model, target=target,
                             seed=seed, out=out, quiet=quiet, resume=resume, calibrate=calibrate, output=output,
                             executor=executor, figures=figures, **kw).run()


@dataclass
class DataRandomizationModels:
    """The models :func:`train_for_data_randomization` trained: the permuted-label one (a
    :class:`~sanitas.models.TrainedModel`), the ceiling (or None) and what each is, in words (``notes``)."""

    permuted: Any
    ceiling: nn.Module | None
    notes: dict[str, str]


#: the permuted-label model starts from its own initialisation (seed + this): sharing the true-label model's
#: (seed) made the two alike before any training, and a barely trained pair scored 0.85 where the ceiling (seed + 1,
#: an independent initialisation) scored 0.11 - judged against a reference without that head start
PERMUTED_SEED_OFFSET = 2


def train_for_data_randomization(model, dataset, *, seed: int = 0, train_size: int | None = 2000,
                                 epochs: int = 100, lr: float = 3e-4, target_accuracy: float | None = 0.95,
                                 ceiling: bool = True, quiet=None) -> DataRandomizationModels:
    """Train the architecture of ``model`` (any model spec: a reference model's name, a class, a pickled module,
    a Hugging Face directory; :mod:`sanitas.models.spec`) from a fresh initialisation on permuted labels of
    ``dataset`` (``train_size`` examples, until ``target_accuracy`` on them or ``epochs``), and, with
    ``ceiling``, on the true labels with seed ``seed + 1`` (sanitas' training loop: Adam, cosine schedule). The
    permuted-label model is initialised with seed ``seed + 2`` (:data:`PERMUTED_SEED_OFFSET`): the true-label model
    (seed ``seed``), the ceiling and it share no initialisation, so that true-vs-permuted and true-vs-ceiling differ
    in the labels only."""
    from sanitas.models import model_source, train

    src = model_source(model)
    perm_seed = seed + PERMUTED_SEED_OFFSET
    perm = train(src, dataset, "permuted", seed=perm_seed, train_size=train_size, epochs=epochs, lr=lr,
                 target_accuracy=target_accuracy, quiet=quiet)
    notes = {"permuted_labels": f"the architecture of {src.describe()}, freshly initialised and trained on "
                                f"permuted labels of {perm.config['dataset']} by sanitas (seed {perm_seed})",
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
    """Per method and metric: ``result.verdicts(metric)`` (the one rule of every check, against the model-seed
    ceiling), with ``permuted`` (the true-vs-permuted similarity), its interval, the ceiling, the verdict and
    ``passes`` (verdict == "pass")."""
    rows = []
    for metric in dict.fromkeys(result.table["metric"]):
        for r in result.verdicts(metric).to_dict("records"):
            rows.append({"method": r["method"], "metric": metric, "permuted": r["estimate"],
                         "permuted_ci_low": r["ci_low"], "permuted_ci_high": r["ci_high"],
                         "ceiling": r.get("ceiling"), "verdict": r["verdict"], "passes": r["verdict"] == "pass"})
    return pd.DataFrame(rows, columns=["method", "metric", "permuted", "permuted_ci_low", "permuted_ci_high",
                                       "ceiling", "verdict", "passes"])
