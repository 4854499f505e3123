"""Lightweight probabilistic layers: propagate a mean and a variance through a network.

Every activation is modelled as a Gaussian ``N(mean, var)`` and units are treated as
independent (the "lightweight probabilistic deep network" of Gast & Roth, 2018, used by DASP,
Ancona et al., ICML 2019). A layer maps ``(mean, var) -> (mean, var)``:

* affine layers (``Linear``, ``Conv2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, eval-mode
  ``BatchNorm``): ``mean' = A mean + c``, ``var' = (A*A) var`` (element-wise squared weights),
  exact for independent inputs;
* ``ReLU``: the first two moments of a rectified Gaussian (:func:`relu_moments`), exact;
* ``MaxPool2d``: the max of two Gaussians by moment matching (Clark, 1961;
  :func:`max_moments`), applied in sequence over the pooling window -- an approximation for
  windows of more than two elements (the max of a max is not Gaussian);
* ``Flatten``, ``Dropout`` (identity at eval), ``Identity``: shape only.

With zero variance every layer is exactly its deterministic counterpart (same ``torch``
operation on the mean). The probabilistic layers hold *references* to the user's modules:
weights are shared and read only, and nothing is registered as a submodule, so nothing done
to the twin (``eval()``, ``to()``) can reach the user's model.

:func:`to_probabilistic` builds the twin of an ``nn.Sequential``-like model: the leaf modules
in the order they are registered, recursing into containers, and (given an example input)
proves with forward hooks that this order *is* the model's forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from sanitas.errors import InputError, UnsupportedLayerError
from sanitas.explain._core import eval_mode
from sanitas.shapley.moments import Moments, max_moments, relu_moments
from sanitas.shapley.prob_layers import _CONTAINERS, SUPPORTED, ProbLayer, ProbReshape, supported_layers

__all__ = ["Moments", "ProbLayer", "ProbabilisticNet", "SUPPORTED", "max_moments", "relu_moments", "supported_layers",
           "to_probabilistic"]


class ProbabilisticNet:
    """The probabilistic twin of a sequential model: a list of ``(path, ProbLayer)`` in forward order."""

    def __init__(self, layers: list[tuple[str, ProbLayer]]):
        self.layers = list(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[tuple[str, ProbLayer]]:
        return iter(self.layers)

    def __repr__(self) -> str:
        body = "\n".join(f"  ({p or '<root>'}): {layer!r}" for p, layer in self.layers)
        return f"ProbabilisticNet(\n{body}\n)"

    def __call__(self, mean: torch.Tensor, var: torch.Tensor, start: int = 0, stop: int | None = None) -> Moments:
        return self.forward(mean, var, start, stop)

    def forward(self, mean: torch.Tensor, var: torch.Tensor, start: int = 0, stop: int | None = None) -> Moments:
        """Propagate ``(mean, var)`` through layers ``start:stop``."""
        if mean.shape != var.shape:
            raise InputError(f"mean and variance must have one shape, got {tuple(mean.shape)} and {tuple(var.shape)}")
        for _, layer in self.layers[start:stop]:
            mean, var = layer(mean, var)
        return mean, var

    def deterministic(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The model's own forward pass, layer by layer (zero variance)."""
        for _, layer in self.layers[start:stop]:
            x = layer.deterministic(x)
        return x

    def linear(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The linear part ``A x`` of an affine stretch of layers (every layer in it must be affine)."""
        for _, layer in self.layers[start:stop]:
            x = layer.linear(x)
        return x

    def affine_prefix(self) -> int:
        """How many leading layers are affine (their composition is one affine map)."""
        n = 0
        for _, layer in self.layers:
            if not layer.affine:
                break
            n += 1
        return n


def _walk(module: nn.Module, path: str, out: list[tuple[str, nn.Module]]) -> None:
    factory = SUPPORTED.get(type(module))
    if factory is not None:
        out.append((path, module))
        return
    children = list(module.named_children())
    if not children:
        if isinstance(module, _CONTAINERS):
            return  # an empty Sequential is the identity
        raise UnsupportedLayerError(
            f"layer '{path or '<root>'}' ({type(module).__name__}) has no probabilistic version, so DASP cannot "
            f"propagate moments through it. Supported layers: {', '.join(supported_layers())}; containers are "
            "walked in registration order")
    for name, child in children:
        _walk(child, f"{path}.{name}" if path else name, out)


def to_probabilistic(model: nn.Module, example: torch.Tensor | None = None) -> ProbabilisticNet:
    """The probabilistic twin of ``model``, sharing its weights.

    The model's leaf modules are taken in registration order (``named_children``, recursively);
    each must be a supported layer (:data:`SUPPORTED`), else :class:`UnsupportedLayerError` names
    its path and type. This is the forward order for ``nn.Sequential`` and for the reference
    models (``PaperCNN.forward`` is ``output(relu3(fc1(flatten(features(x)))))``), but not for
    any ``nn.Module``; so when an ``example`` input is given (or the model records an
    ``input_shape``, as the reference models do) the model is run once with forward hooks and
    the twin is accepted only if that run calls exactly these modules, in this order, each on the
    previous one's output, and returns the last one's output. A reshape between two modules
    (``x.view(len(x), -1)`` in ``forward``) is added to the twin; anything else (a residual
    addition, a functional activation, a reused module) raises :class:`UnsupportedLayerError`
    naming the first layer where the data flow departs from the sequence.
    """
    leaves: list[tuple[str, nn.Module]] = []
    _walk(model, "", leaves)
    layers = [(p, SUPPORTED[type(m)](m)) for p, m in leaves]
    if example is None and hasattr(model, "input_shape"):
        g = torch.Generator().manual_seed(0)
        p0 = next(iter(model.parameters()), None)
        example = torch.rand(1, *model.input_shape, generator=g)
        if p0 is not None:
            example = example.to(device=p0.device, dtype=p0.dtype)
    if example is not None:
        layers = _verify(model, layers, example)
    return ProbabilisticNet(layers)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and bool(torch.equal(a, b)))


def _reshaped(prev: torch.Tensor, cur: torch.Tensor) -> bool:
    return (prev.shape[0] == cur.shape[0] and prev.numel() == cur.numel() and prev.shape != cur.shape
            and bool(torch.equal(prev.reshape(-1), cur.reshape(-1))))


def _verify(model: nn.Module, layers: list[tuple[str, ProbLayer]], example: torch.Tensor
            ) -> list[tuple[str, ProbLayer]]:
    """Trace one eval-mode forward pass and check that it is the sequence ``layers``."""
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(mod, inputs, output):
        calls.append((mod, inputs[0] if inputs else None, output))

    names = {id(layer.module): p for p, layer in layers}
    handles = [m.register_forward_hook(hook) for m in {id(layer.module): layer.module for _, layer in layers}.values()]
    try:
        with eval_mode(model), torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()

    def where(i):
        return f"'{layers[i][0] or '<root>'}' ({type(layers[i][1].module).__name__})"

    fix = ("; DASP's probabilistic twin supports sequential models only (nn.Sequential, or modules whose forward "
           "applies their child modules once each, in registration order)")
    if len(calls) != len(layers) or any(c[0] is not layer.module for c, (_, layer) in zip(calls, layers)):
        for i, (c, (_, layer)) in enumerate(zip(calls, layers)):
            if c[0] is not layer.module:
                got = names.get(id(c[0]), type(c[0]).__name__)
                raise UnsupportedLayerError(f"the model's forward calls '{got}' where the registration order expects "
                                            f"{where(i)} (call {i + 1}){fix}")
        raise UnsupportedLayerError(f"the model's forward made {len(calls)} layer calls, but it has {len(layers)} "
                                    f"layers (a layer skipped or reused){fix}")
    result: list[tuple[str, ProbLayer]] = []
    prev = example
    for i, ((mod, inp, outp), (path, layer)) in enumerate(zip(calls, layers)):
        if not isinstance(inp, torch.Tensor) or not _same(prev, inp):
            if isinstance(inp, torch.Tensor) and _reshaped(prev, inp):
                result.append((f"{path}:reshape", ProbReshape(tuple(inp.shape[1:]))))
            else:
                src = "the model's input" if i == 0 else f"the output of {where(i - 1)}"
                raise UnsupportedLayerError(f"the input of layer {where(i)} is not {src}: the forward applies "
                                            "operations outside modules between them (a residual connection, a "
                                            f"functional call such as F.relu or torch.cat){fix}")
        result.append((path, layer))
        prev = outp
    if not isinstance(out, torch.Tensor) or not _same(prev, out):
        if isinstance(out, torch.Tensor) and _reshaped(prev, out):
            result.append(("<output>:reshape", ProbReshape(tuple(out.shape[1:]))))
        else:
            last = where(len(layers) - 1) if layers else "the input"
            raise UnsupportedLayerError(f"the model's output is not the output of its last layer {last}: the "
                                        "forward transforms it outside modules (e.g. a sum or a softmax in "
                                        f"forward){fix}")
    return result
