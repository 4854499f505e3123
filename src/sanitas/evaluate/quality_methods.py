"""What :func:`sanitas.evaluate.evaluate_quality` evaluates: method specs, the model's
bias-carrying spatial layers and the per-layer / aggregate methods named after them (conventions in
:mod:`sanitas.evaluate.quality`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sanitas.errors import ConfigError
from sanitas.explain import Explainer
from sanitas.explain._core import check_images, eval_mode, model_device

#: method tokens expanded by :func:`expand_methods`
TOKENS = ("layers", "aggregates")


@dataclass
class MethodSpec:
    """One evaluated method: its table label, how to build it, and what it is."""

    label: str
    method: Any                 # a method name (with options), an Explainer or a callable
    family: str = ""            # activity | bias | aggregate | the registry name | "custom"
    layer: str = ""             # layer name for per-layer maps
    layer_index: int = 0        # 1-based layer index (0: not a single-layer map; k for top-k)

    def spec(self) -> str:
        return self.method if isinstance(self.method, str) else repr(self.method)


def spatial_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the model's bias-carrying spatial layers in forward order (see module docstring).

    Runs one forward pass on ``x[:1]``.
    """
    from sanitas.explain.capture import capture
    from sanitas.explain.layers import layer_bias

    check_images(x)
    x1 = x[:1].detach().to(model_device(model))
    with eval_mode(model), torch.no_grad():
        _, seen = capture(model, x1, None, (nn.Conv2d, nn.BatchNorm2d))
    names = [n for n, m, out in seen if out.dim() == 4 and layer_bias(m) is not None]
    if not names:
        raise ConfigError("the model has no convolutional or BatchNorm2d layer with a bias, so there are no "
                          "per-layer activity / bias maps to evaluate; drop layers= / the 'layers' token")
    return names


def layer_methods(model: nn.Module, x: torch.Tensor, layers: str | Sequence[str] = "all", *,
                  per_layer: bool = True, aggregates: bool = True, interpolation: str = "bilinear") -> list[MethodSpec]:
    """Per-layer activity and bias maps and top-down activity aggregates for ``model``.

    ``layers``: ``"all"`` (every layer of :func:`spatial_layers`) or a list of layer names (in
    forward order). Returns :class:`MethodSpec` s labelled ``activity[i]``, ``bias[i]`` (if
    ``per_layer``) and ``top-2`` ... ``top-L``, ``all+input`` (if ``aggregates``).
    """
    available = spatial_layers(model, x)
    if isinstance(layers, str):
        if layers != "all":
            raise ConfigError(f"layers must be 'all' or a list of layer names, got {layers!r}")
        names = available
    else:
        names = list(layers)
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ConfigError(f"layer(s) {unknown} are not bias-carrying spatial layers of the model; "
                              f"choose from {available}")
        names = [n for n in available if n in names]  # forward order
    interp = "" if interpolation == "bilinear" else f", interpolation={interpolation}"
    out: list[MethodSpec] = []
    from sanitas.explain.registry import parse_value

    # nn.Sequential layers are named 0, 1, ...: quoted, or the method name would read them as numbers
    quoted = [n if parse_value(n) == n else f"'{n}'" for n in names]
    if per_layer:
        for i, (n, q) in enumerate(zip(names, quoted), 1):
            out.append(MethodSpec(f"activity[{i}]", f"activity(layers=[{q}]{interp})", "activity", n, i))
            out.append(MethodSpec(f"bias[{i}]", f"bias(layers=[{q}]{interp})", "bias", n, i))
    if aggregates and len(names) >= 2:
        joined = ", ".join(quoted)
        for k in range(2, len(names) + 1):
            out.append(MethodSpec(f"top-{k}", f"activity(layers=[{joined}], aggregate=top-{k}{interp})",
                                  "aggregate", "", k))
        out.append(MethodSpec("all+input", f"activity(layers=[{joined}], aggregate=all, include_input=true{interp})",
                              "aggregate", "", len(names) + 1))
    return out


def _family(method: Any) -> str:
    if isinstance(method, str):
        from sanitas.explain import EXPLAINERS
        from sanitas.explain.registry import parse_method

        name = parse_method(method)[0]
        return EXPLAINERS.canonical(name) if name in EXPLAINERS else name
    return getattr(method, "name", "custom") if isinstance(method, Explainer) else "custom"


def expand_methods(methods, model: nn.Module | None = None, x: torch.Tensor | None = None,
                   layers: str | Sequence[str] | None = None, interpolation: str = "bilinear") -> list[MethodSpec]:
    """Method specs from a list (names, Explainers, callables, ``(label, method)`` pairs,
    :class:`MethodSpec`) or a dict ``{label: method}``; the tokens ``"layers"`` and
    ``"aggregates"`` expand to :func:`layer_methods`. ``layers`` (``"all"`` or names) adds both."""
    if isinstance(methods, (str, Explainer)) or callable(methods):
        methods = [methods]
    items = list(methods.items()) if isinstance(methods, Mapping) else list(methods)
    specs: list[MethodSpec] = []
    want_layers = want_aggr = layers is not None
    for item in items:
        if isinstance(item, MethodSpec):
            specs.append(item)
            continue
        if isinstance(item, str) and item.strip() in TOKENS:
            want_layers |= item.strip() == "layers"
            want_aggr |= item.strip() == "aggregates"
            continue
        label, m = item if isinstance(item, tuple) else (None, item)
        if label is None:
            label = m.strip() if isinstance(m, str) else (repr(m) if isinstance(m, Explainer)
                                                          else getattr(m, "__name__", type(m).__name__))
        specs.append(MethodSpec(str(label), m, _family(m)))
    if want_layers or want_aggr:
        if model is None or x is None:
            raise ConfigError("layer methods need the model and images to find the layers")
        specs = layer_methods(model, x, layers if layers is not None else "all", per_layer=want_layers,
                              aggregates=want_aggr, interpolation=interpolation) + specs
    if not specs:
        raise ConfigError("no method to evaluate: give method names (see `sanitas methods`) or layers='all'")
    seen: set[str] = set()
    for s in specs:
        if s.label in seen:
            raise ConfigError(f"method {s.label!r} is listed twice; give each method once (or distinct labels)")
        seen.add(s.label)
    return specs
