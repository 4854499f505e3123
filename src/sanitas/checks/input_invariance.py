"""The input invariance test (Kindermans et al. 2017), the worked example of a check (:mod:`sanitas.checks.base`).

A second model computes exactly the same logits on ``x + c`` as the first on ``x`` (its first layer absorbs
the shift); explanations of ``x`` on the first model and of ``x + c`` on the twin should be equal for an
input-invariant method.

The whole check is the class below: its name and config options, ``prepare`` (validate, build the twin),
``variants`` (the model itself, then the twin explained on ``x + c``, with the method's baseline moved by ``c``
when asked), the named numbers claims read, and what the report says. Everything else (methods, metrics,
calibration, the cells through :func:`sanitas.engine.run`, resuming, Ray, the result and its files) is
:class:`~sanitas.checks.base.Check`'s. A config entry ``check: input_invariance`` with ``shift:`` runs it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sanitas import engine
from sanitas.checks.base import Check, legacy_positional
from sanitas.checks.result import CheckResult, model_facts
from sanitas.errors import ModelError
from sanitas.experiments.schema import _flag, _number
from sanitas.utils import validation
from sanitas.utils.forward import inference_logits, untouched


class InputInvariance(Check):
    """Explain ``x`` on the model and ``x + shift`` on its shift-compensated twin (see the module docs).

    ``shift_baselines=True`` moves the baseline of baseline methods (IG, DeepLIFT) by the same shift on the
    twin, the fix Kindermans et al. describe; otherwise both use the same baseline.
    """

    name = "input_invariance"
    options = {"shift": _number(), "shift_baselines": _flag}
    calibrates = False
    reading = ("Each number is the similarity between a method's map of the model on the images and its map of a "
               "twin model that computes the same logits on the shifted images. An input-invariant method gives the "
               "same map (similarity 1).")

    def __init__(self, model, x, y=None, *, shift: float = -1.0, shift_baselines: bool = False, **common):
        super().__init__(model, x, y, **common)
        self.shift = validation.real(shift, "shift")
        self.shift_baselines = bool(shift_baselines)

    def prepare(self) -> None:
        super().prepare()
        self.twin = shifted_model(self.model, self.x, self.shift)  # the same classes by construction
        self.gap = float((inference_logits(self.model, self.x) - inference_logits(self.twin, self.x + self.shift))
                         .abs().max())

    def variants(self):
        shift = self.shift
        yield engine.Variant("original", 0, self.model)
        yield engine.Variant(f"shifted_by_{shift:g}", 1, self.twin, inputs=self.x + shift,
                             adapt=(lambda e: _shift_baseline(e, shift)) if self.shift_baselines else None)

    def total(self) -> int:
        return 2

    def config(self) -> dict:
        return {"shift": self.shift, "shift_baselines": self.shift_baselines}

    def meta(self, meta: dict) -> dict:
        facts = {"original": model_facts(self.model, self.x, self.y),
                 f"shifted_by_{self.shift:g}": model_facts(self.twin, self.x + self.shift, self.y)}
        return {"models": facts, "accuracy": {k: f["accuracy"] for k, f in facts.items()},
                "max_logit_difference": self.gap}

    def scalars(self, result: CheckResult) -> dict[str, float]:
        return {"max_logit_difference": result.meta["max_logit_difference"]}


def input_invariance(model: nn.Module, x, y=None, *args, methods=None, metrics=InputInvariance.default_metrics,
                     shift: float = -1.0, shift_baselines: bool = False, target=None, seed: int = 0, out=None,
                     quiet=None, resume: bool = True, calibrate: bool = False, output=None,
                     executor=None, figures: bool = True) -> CheckResult:
    """Run :class:`InputInvariance`: ``input_invariance(model, x, y, methods=[...], shift=-1.0)`` (Kindermans et
    al. shift [0, 1] images to [-1, 0]). A method that cannot explain the model is left out
    (``result.meta["refused"]``); ``executor`` as in :func:`~sanitas.checks.model_randomization`."""
    kw = {"methods": methods, "metrics": metrics, "shift": shift, "shift_baselines": shift_baselines,
          **legacy_positional("input_invariance", args, ("methods", "metrics"))}
    return InputInvariance(model, x, y, target=target, seed=seed, out=out, quiet=quiet, resume=resume,
                           calibrate=calibrate, output=output, executor=executor, figures=figures, **kw).run()


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
