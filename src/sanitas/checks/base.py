"""The protocol every check follows: what its cells are, how a cell is computed, how cells are summarized.

A check is one class (see :mod:`sanitas.checks.input_invariance`, the worked example)::

    class InputInvariance(Check):
        name = "input_invariance"                  # its `check:` name in configs and its results' kind
        options = {"shift": number, ...}          # what a config entry may set besides the common keys
        def prepare(self): ...                     # validate, build what the variants need
        def variants(self): ...                    # the models compared with the reference: engine.Variant
        def scalars(self, result): ...             # named numbers claims read (optional)

and the base class does the rest, identically for every check: the methods and metrics resolved, the
images and labels validated (``y=None``: the model's predictions stand for the labels), the null bands
(calibration) computed, the cells run by :func:`sanitas.engine.run` (the only loop over cells; resumed from
``out``; here or on a Ray cluster), a :class:`~sanitas.checks.result.CheckResult` with its meta, and the
results files. A cell is (variant, method): the variant's model explained by the method once and scored
against the reference model's maps with every metric (:func:`sanitas.cells.compute_cell`); a check that
scores maps otherwise supplies ``extra_scores`` (the decision-flip evaluation does).

Every check has one public signature shape, ``Check(model, x, y=None, *, methods, metrics, target, seed, out,
quiet, ...)``, and a function of the same name and shape (``input_invariance(model, x, y, methods=[...])``).
A subclass with a ``name`` is registered in :data:`CHECKS`, which is what a config's ``check:`` names: a new
check needs its class and a config entry, nothing else (:meth:`Check.run_entry` runs a config entry).
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import nn

from sanitas import engine
from sanitas.checks.inputs import (check_batch, check_metrics_for_inputs, describe_methods, explained_accuracy,
                                   resolve_methods, resolve_metrics, target_policy, warn_degenerate)
from sanitas.checks.result import CheckResult, model_facts
from sanitas.executors import executor_scope
from sanitas.explain.forward import model_call
from sanitas.utils import validation
from sanitas.utils.forward import inference_logits
from sanitas.utils.hashing import model_fingerprint, tensor_digest

#: every check class by its ``check:`` name
CHECKS: dict[str, type[Check]] = {}


class Check:
    """One check (see the module docs). Subclasses set :attr:`name` and write :meth:`variants`."""

    #: the check's name in configs (``check: NAME``) and its results' ``kind``
    name: ClassVar[str] = ""
    #: config keys of this check besides the common ones (model, dataset, images, seed, methods, metrics...):
    #: key -> checker ``(value, where) -> None`` from :mod:`sanitas.experiments.schema`; passed to the constructor
    options: ClassVar[dict[str, Callable]] = {}
    default_metrics: ClassVar[tuple[str, ...]] = ("spearman_abs", "spearman", "ssim")
    #: whether the null bands of the metrics are computed by default
    calibrates: ClassVar[bool] = True
    #: what the report says a number means (``report.html``'s "how to read this")
    reading: ClassVar[str] = ""
    #: False: the list of methods is not part of the run's identity, so methods can be added to a finished run
    #: (each cell still records its method and is recomputed when the name now means another method)
    methods_in_config: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            CHECKS[cls.name] = cls

    def __init__(self, model: nn.Module, x: torch.Tensor, y=None, *, methods, metrics=None, target: str | None = None,
                 seed: int = 0, out: str | Path | None = None, quiet: bool | None = None, resume: bool = True,
                 calibrate: bool | None = None, show: int = 8, output=None, executor=None, figures: bool = True):
        self.model, self.x, self.y = model, x, y
        self.labels_given = y is not None
        self.methods, self.metrics = methods, self.default_metrics if metrics is None else metrics
        self.target = target
        self.seed = validation.seed(seed)
        self.show = validation.count(show, "show", minimum=0)
        self.out = Path(out) if out is not None else None
        self.quiet, self.resume, self.output, self.executor = quiet, resume, output, executor
        self.calibrate = self.calibrates if calibrate is None else bool(calibrate)
        self.figures = bool(figures)
        #: what the run was about (model spec, dataset), shown in the report: set by a config entry or command
        self.about: dict[str, Any] | None = None
        self.reference: nn.Module = model
        self.normalize: str | None = None
        self.draws = 1
        self.extra_scores: Callable | None = None
        self.explainers: dict[str, Any] | None = None
        self.sims: dict[str, Any] | None = None

    # -- what a check writes ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Validate the inputs and build what :meth:`variants` needs (runs inside the model-call context)."""
        self.x, self.y = check_batch(self.model, self.x, self.y)

    def variants(self) -> Iterable[engine.Variant]:
        """The models whose maps are compared with the reference's; index 0 is the reference model itself."""
        raise NotImplementedError(f"{type(self).__name__} must define variants()")

    def targets(self) -> tuple[Any, Callable[[engine.Variant], Any]]:
        """The class the reference explains, and the rule for each variant (default: :data:`TARGETS`)."""
        return target_policy(self.target, self.model, self.x, self.y)

    def total(self) -> int | None:
        """How many variants (for the progress bar), when known in advance."""
        return None

    def config(self) -> dict[str, Any]:
        """What identifies a run besides methods, metrics, images and seed: a changed value recomputes its cells."""
        return {}

    def meta(self, result_meta: dict[str, Any]) -> dict[str, Any]:
        """Extra entries for ``meta.json``."""
        return {}

    def shape_table(self, table: pd.DataFrame) -> pd.DataFrame:
        """The results table as this check writes it (default: the engine's rows as they are)."""
        return table

    def finish(self, result: CheckResult) -> None:
        """Look at the result before it is written (default: warn about maps that lost their signal)."""
        warn_degenerate(result, None)

    def scalars(self, result: CheckResult) -> dict[str, float]:
        """Named numbers a config's claims read (``measure: {scalar: NAME}``)."""
        return {}

    # -- the driver, the same for every check -------------------------------------------------------------
    def run(self) -> CheckResult:
        """Run the check: its cells through :func:`sanitas.engine.run`, and a :class:`CheckResult`."""
        with model_call(output=self.output):
            return self._run()

    def _run(self) -> CheckResult:
        t0 = time.perf_counter()
        self.prepare()
        x, y = self.x, self.y
        if self.explainers is None:
            self.explainers = resolve_methods(self.methods)
        if self.sims is None:
            self.sims = resolve_metrics(self.metrics)
        check_metrics_for_inputs(self.sims, x)
        accuracy = explained_accuracy(self.model, x, y) if self.labels_given else \
            {"accuracy": float("nan"), "classes": int(inference_logits(self.model, x[:1]).shape[1]), "chance": float("nan")}
        ref_target, target_for = self.targets()
        names: list[str] = []
        config = {"check": self.name, "methods": {k: repr(e) for k, e in self.explainers.items()}
                  if self.methods_in_config else None,
                  "metrics": list(self.sims), "seed": self.seed, "target": self.target, "n_images": int(x.shape[0]),
                  "images_digest": tensor_digest(x), "labels": "given" if self.labels_given else "predicted",
                  "model": model_fingerprint(self.model), **self.config()}
        cal, cal_seconds = None, 0.0
        if self.calibrate:  # first: a metric it cannot calibrate fails before any cell is computed
            from sanitas.similarity.calibration import calibrate

            t = time.perf_counter()
            k = accuracy["classes"]
            cal = calibrate(list(self.sims.values()), x=engine.as_image_batch(x), seed=self.seed,
                            classes=k if k > 1 else None)
            cal_seconds = time.perf_counter() - t
        refused: dict[str, str] = {}
        references: list[pd.DataFrame] = []

        def named(vs):
            for v in vs:
                if v.role == "stage" and v.draw == 0:
                    names.append(v.name)
                yield v

        with executor_scope(self.executor) as ex, engine.CellStore(self.out, config, resume=self.resume) as store:
            # variants come one at a time: a cascading stage's model is explained before the next stage changes it
            table, shown, timings = engine.run(self.reference, named(self.variants()), x, self.explainers, self.sims,
                                               target_for, store, ref_target, normalize=self.normalize,
                                               show=self.show, quiet=self.quiet, total=self.total(),
                                               extra_scores=self.extra_scores, refused=refused,
                                               references=references, draws=self.draws, executor=ex)
            refs = pd.concat(references, ignore_index=True) if references else None
            table = self.shape_table(table)
            if self.calibrate:
                timings["calibration"] = cal_seconds
            timings["total"] = time.perf_counter() - t0
            meta = {"config": config, "versions": engine.versions(), "timings": timings, "seed": self.seed,
                    "stages": names, "refused": refused,
                    "model": {**model_facts(self.model, x, y), "classes": accuracy["classes"],
                              "chance": accuracy["chance"]},
                    "accuracy": accuracy["accuracy"], "labels": config["labels"],
                    "resolved": describe_methods(self.explainers, self.reference, x, refused)}
            meta.update(self.meta(meta))
            res = CheckResult(self.name, table, cal, meta, shown, x[:self.show].cpu(), names, self.out,
                              references=refs)
            self.finish(res)
            if self.about is not None:
                meta["about"] = self.about
            if self.out is not None:
                engine.write_outputs(self.out, table, meta, cal, refs, images=x[:self.show])
        if self.out is not None and self.figures:
            self.draw(res)
        return res

    def draw(self, result: CheckResult) -> None:
        """The figures and ``report.html`` of a result written to ``out`` (every check's: :mod:`sanitas.report`)."""
        from sanitas.report.figures import check_figures
        from sanitas.report.html import check_report

        result.figures = check_figures(result, self.out)
        result.report = check_report(result, self.out, result.figures)

    # -- a config entry -----------------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: dict, model: nn.Module, x: torch.Tensor, y, out: Path | None, quiet, **extra) -> Check:
        """The check a config entry describes, on a loaded model and images (methods built from the entry;
        ``extra``: constructor arguments that are not config keys, e.g. models trained for the entry)."""
        from sanitas.experiments.runner_base import build_methods

        takes = inspect.signature(cls.__init__).parameters
        kw = {k: spec[k] for k in cls.options if k in spec and k in takes}  # others are the entry runner's
        if "target" in spec:
            kw["target"] = spec["target"]
        return cls(model, x, y, methods=build_methods(spec.get("methods")),
                   metrics=spec.get("metrics", list(cls.default_metrics)), seed=int(spec["seed"]), out=out,
                   quiet=quiet, resume=spec.get("resume", True), **kw, **extra)

    @classmethod
    def run_entry(cls, spec: dict, out: Path, quiet: bool):
        """Run a config entry (``check: NAME``): load its model and images, run the check, draw its figures and
        report; an :class:`~sanitas.experiments.runner_base.Outcome` for claims."""
        from sanitas.experiments.runner_base import _check_outcome, _data
        from sanitas.report.about import about_run

        t0 = time.perf_counter()
        src, net, ds = _data(spec, quiet, f"the {cls.name} check")
        check = cls.from_spec(spec, net, ds.x, ds.y, out, quiet)
        check.output, check.about = src.output, about_run(src, ds)
        res = check.run()
        return _check_outcome(res, out, t0, check.scalars(res))


def legacy_positional(fn_name: str, args: tuple, names: tuple[str, ...]) -> dict:
    """Arguments given by position after ``y`` in the older signatures (``check(model, x, y, methods, metrics)``),
    by name, with a FutureWarning: the keyword form is the one shape of every check."""
    if not args:
        return {}
    if len(args) > len(names):
        raise TypeError(f"{fn_name}() takes at most {3 + len(names)} positional arguments ({3 + len(args)} given)")
    warnings.warn(f"{fn_name}(model, x, y, {', '.join(names[:len(args)])}) by position is deprecated: pass "
                  f"{', '.join(f'{n}=' for n in names[:len(args)])} by keyword", FutureWarning, stacklevel=3)
    return dict(zip(names, args))
