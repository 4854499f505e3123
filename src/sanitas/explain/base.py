"""The Explainer noun: ``explainer(model, x, target) -> Tensor`` shaped like ``x``."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from sanitas.errors import ConfigError, InputError
from sanitas.explain._core import (TargetLike, check_images, check_not_inference, chunks, eval_mode,
                                   inputs_per_pass, logits_of, model_device, num_classes, resolve_target, selection)
from sanitas.explain.forward import OutputSelector, image_rows, model_call, pack_inputs
from sanitas.explain.kernels import cpu_kernels
from sanitas.utils.memory import hold_freed_memory
from sanitas.utils.validation import check_finite_maps


class Explainer:
    """An attribution method.

    Call it as ``explainer(model, x, target)``: ``x`` is ``(N, C, H, W)``; ``target`` is a class
    index per image (int, list or LongTensor), ``"predicted"`` (the model's arg-max, the default)
    or ``"all"``. It returns raw, signed maps shaped like ``x``, or ``(N, K, C, H, W)`` for
    ``"all"``. The model is explained in eval mode and restored; its parameters, buffers and
    ``requires_grad`` flags are never changed.

    Subclasses implement :meth:`attribute` on a selection matrix ``G`` of shape ``(B, N, K)``
    (see :mod:`sanitas.explain._core`) and return ``(B, N, C, H, W)``.
    """

    name: ClassVar[str] = "explainer"
    #: False for model-free controls (edge detectors, random maps).
    uses_model: ClassVar[bool] = True
    #: True when sum(map) == logit (or == f(x) - f(baseline)) holds exactly for ReLU networks.
    complete: ClassVar[bool] = False
    #: True when an image's map depends only on that image (no randomness, no batch statistics):
    #: such methods run in passes of ``inputs_per_pass`` images (equal maps, less memory churn).
    per_image: ClassVar[bool] = False
    #: False to run the passes without :mod:`sanitas.explain.kernels` (black-box callables).
    fast_kernels: ClassVar[bool] = True
    #: False for methods that need one input tensor with a spatial layout (GradCAM, layer maps, controls).
    tuple_inputs: ClassVar[bool] = True
    #: True for methods that use every class of the model (competition), so that the selection matrix
    #: must have the model's class count before the first pass (one probe pass on one image).
    needs_num_classes: ClassVar[bool] = False

    #: option name -> default value; subclasses extend it.
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any):
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise ConfigError(f"{self.name} has no option(s) {sorted(unknown)}; valid options: "
                              f"{sorted(self.defaults) or 'none'}")
        self.options = options
        for k, v in {**self.defaults, **options}.items():
            setattr(self, k, v)
        self.validate()

    def validate(self) -> None:
        """Check option values; raise ConfigError with the fix."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({opts})" if opts else self.name

    # -- the public call -----------------------------------------------------------------------
    def __call__(self, model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...], target: TargetLike = "predicted",
                 *, output: OutputSelector = None, additional_forward_args: Any = None):
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        as_tuple = isinstance(x, (tuple, list))
        x, packing = pack_inputs(x)
        if packing is not None and not self.tuple_inputs:
            raise InputError(f"{self!r} explains one input tensor with a spatial layout; tuple inputs work with "
                             "the gradient-based and rule-based methods (gradient, input_x_gradient, "
                             "integrated_gradients, smoothgrad, vargrad, guided_backprop, lrp_*, deeplift)")
        check_images(x)
        check_not_inference(model)
        dev = model_device(model)
        # Explanations need autograd whatever the caller's mode: torch.no_grad() and
        # torch.inference_mode() around a call are lifted inside it, and restored on return.
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().to(dev)
            if x.is_inference():
                x = x.clone()
            with model_call(output, additional_forward_args, n=x.shape[0], packing=packing), eval_mode(model):
                if target is None or (isinstance(target, str) and target == "predicted"):
                    with torch.no_grad():
                        logits = logits_of(model, x)
                    tgt = resolve_target(target, logits)
                    k = logits.shape[1]
                elif isinstance(target, str) and target == "all" or self.needs_num_classes:
                    k = num_classes(model, x)
                    tgt = resolve_target(target, None, n=x.shape[0], k=k, device=x.device)
                else:  # explicit classes: no probe pass; the range is checked against the first real one
                    tgt = resolve_target(target, None, n=x.shape[0], k=None, device=x.device)
                    k = int(tgt.max()) + 1
                G = selection(tgt, x.shape[0], k, x.device, x.dtype)
                with hold_freed_memory(x.device, reserve=0), \
                        cpu_kernels(x.device, model) if self.fast_kernels else contextlib.nullcontext():
                    maps = self._attribute_in_passes(model, x, G)
                check_finite_maps(maps, self, model, x)  # never a silent NaN: the error names the cause
        maps = maps.transpose(0, 1).contiguous() if tgt is None else maps[0]
        if packing is not None:
            return packing.unpack(maps)
        return (maps,) if as_tuple else maps

    def attribute(self, model: nn.Module, x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _attribute_in_passes(self, model: nn.Module, x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """:meth:`attribute`, in passes of ``inputs_per_pass`` images for ``per_image`` methods: on
        CPU a pass past ~80 MB of activations makes the allocator re-fault its memory every call."""
        size = inputs_per_pass(None, x, model) if self.per_image else x.shape[0]
        if size >= x.shape[0]:
            return self.attribute(model, x, G)
        parts = []
        for s in chunks(x.shape[0], size):
            with image_rows(torch.arange(s.start, s.stop)):
                parts.append(self.attribute(model, x[s], G[:, s]))
        return torch.cat(parts, dim=1)


class WrapperExplainer(Explainer):
    """A method that wraps another one: option ``base`` (a name, Explainer or callable) built with
    ``base_options``; ``repr`` reads ``name(inner, options)``, e.g. ``smoothgrad(guided_backprop)``."""

    def validate(self):
        from sanitas.explain.registry import get_explainer

        self.inner = get_explainer(self.base, **(self.base_options or {}))

    def __repr__(self):
        extra = {k: v for k, v in self.options.items() if k not in ("base", "base_options")}
        opts = ", ".join(f"{k}={v!r}" for k, v in extra.items())
        return f"{self.name}({self.inner!r}{', ' + opts if opts else ''})"

    @property
    def uses_model(self):  # type: ignore[override]
        return self.inner.uses_model

    @property
    def needs_num_classes(self):  # type: ignore[override]
        return self.inner.needs_num_classes


class CallableExplainer(Explainer):
    """Wraps a user's ``f(model, x, target)`` (Quantus' ``explain_func`` contract) or a Captum object."""

    fast_kernels = False  # a black box: it runs exactly as the user wrote it
    tuple_inputs = False

    def __init__(self, fn, name: str | None = None):
        self.fn = fn
        self.options = {}
        self._name = name or getattr(fn, "__name__", None) or type(fn).__name__

    @property
    def name(self):  # type: ignore[override]
        return self._name

    def __repr__(self):
        return self._name

    def _call_one(self, model, x, target):
        if hasattr(self.fn, "attribute"):  # a Captum attribution object
            bound = getattr(self.fn, "forward_func", None)
            if isinstance(bound, nn.Module) and bound is not model:  # it would explain its own model, silently
                raise ConfigError(f"the Captum object {self._name} explains the model it was built with, not the "
                                  "model it is asked to explain (a check explains copies: randomized stages, other "
                                  "models); pass a function that builds it on the model it is given: lambda model, "
                                  f"x, target: {type(self.fn).__name__}(model).attribute(x, target=target)")
            out = self.fn.attribute(x, target=target)
        else:
            sig = inspect.signature(self.fn)
            if "target" in sig.parameters:
                out = self.fn(model, x, target=target)
            else:
                out = self.fn(model, x, target)
        out = torch.as_tensor(out, device=x.device, dtype=x.dtype)
        if out.shape != x.shape:
            try:
                out = out.reshape(x.shape)
            except RuntimeError as exc:
                raise InputError(f"explanation function {self._name} returned shape {tuple(out.shape)} for "
                                 f"inputs of shape {tuple(x.shape)}; it must return maps shaped like the inputs") from exc
        return out

    def attribute(self, model, x, G):
        # A black box: one call per row of G (per class for target="all").
        outs = []
        for b in range(G.shape[0]):
            target = G[b].argmax(1)
            outs.append(self._call_one(model, x, target).detach())
        return torch.stack(outs)
