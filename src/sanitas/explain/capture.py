"""Reading a layer's output during a forward pass, and the feature map GradCAM explains by default.

:func:`capture` keeps the output of named layers exactly as each layer returned it: the rest of
the network continues on a copy, so an in-place operation after the layer (``nn.ReLU(inplace=True)``,
``out += identity`` in a residual block) cannot change what was captured. Gradients still flow
through the copy to the captured tensor.

:func:`default_feature_layer` states GradCAM's default layer as a rule (Selvaraju et al. 2017;
adebayo2018, appendix A.4: "the feature maps of the last convolutional unit"):

* **CNNs** (and 1-D conv nets): the output of the last module, in forward order, whose output has the
  spatial size of the last convolution's output, ``(N, C, *spatial)``. That is the last
  convolution *with* what follows it at that resolution (BatchNorm, ReLU, the residual block that
  contains it), not a later pooling: ``features.relu5`` of a VGG, ``layer4`` of a ResNet, the ReLU after
  ``conv2`` of the sanity-checks paper's CNN (pooling layers are never the feature map). When the network rectifies that output with a
  functional ReLU (``F.relu(self.conv2(x))``), the rectified map is used.
* **Vision transformers** (a patch-embedding convolution followed by token sequences
  ``(N, P + h*w, D)``, ``P`` <= 2 class/distillation tokens): the last token map, output of a
  module other than a linear projection, at which the target logit still depends on the patch
  tokens (a gradient probe on one image). In a ViT that is the input normalization of the last
  block (``layernorm_before``, ``norm1``); the class tokens are dropped and the patch tokens
  reshaped to the ``h x w`` grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from sanitas.errors import ConfigError, NotApplicableError, UnknownNameError
from sanitas.explain._core import check_hookable, logits_of

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
         nn.modules.pooling._AdaptiveMaxPoolNd)
_RELUS = {torch.relu, torch.relu_, torch.nn.functional.relu, torch.nn.functional.relu_, torch.Tensor.relu,
          torch.Tensor.relu_}


def find_module(model: nn.Module, name) -> nn.Module:
    name = str(name)  # an nn.Sequential's layers are numbers ("gradcam(layer=2)" reads 2 as one)
    modules = dict(model.named_modules())
    if name not in modules:
        import difflib

        close = difflib.get_close_matches(name, list(modules), n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        valid = ", ".join(n for n in modules if n)
        raise UnknownNameError(f"the model has no layer {name!r}.{hint} Layers: {valid}")
    return modules[name]


class _Rectified(TorchFunctionMode):
    """Notes the tensor a ReLU makes of a watched tensor (the network's own rectification of a layer)."""

    def __init__(self):
        super().__init__()
        # id -> (layer name, the tensor itself): holding the tensor keeps its id from being reused by
        # another tensor of the same pass (an id alone once matched an unrelated ReLU's input)
        self.watched: dict[int, tuple[str, torch.Tensor]] = {}
        self.rectified: dict[str, torch.Tensor] = {}

    def watch(self, t: torch.Tensor, name: str) -> None:
        self.watched[id(t)] = (name, t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _RELUS and args and isinstance(args[0], torch.Tensor):
            entry = self.watched.get(id(args[0]))
            if entry is not None and entry[1] is args[0] and entry[0] not in self.rectified:
                self.rectified[entry[0]] = out
        return out


def capture(model: nn.Module, x: torch.Tensor, layers: list[str] | None, kinds: tuple = (nn.Conv2d,),
            rectify: bool = False):
    """Forward ``x`` and keep the outputs of the named layers (or of every module of ``kinds``).

    Returns ``(logits, [(name, module, output), ...])`` in forward order (a module called twice
    counts at its first call); outputs stay in the graph and are exactly what the layer returned.
    With ``rectify=True`` an output that the network passes directly to a ReLU is replaced by
    that ReLU's result.
    """
    check_hookable(model, "a method that reads a layer's output")
    named = dict(model.named_modules())
    if layers:
        wanted = {n: find_module(model, n) for n in layers}
    else:
        wanted = {n: m for n, m in named.items() if isinstance(m, kinds)}
    seen: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    watch = _Rectified() if rectify else None
    handles = []
    for n, m in wanted.items():
        def hook(mod, inputs, output, _n=n):
            if isinstance(output, torch.Tensor) and _n not in seen:
                seen[_n] = (mod, output)
                copy = output.clone()  # what the rest of the network works on (and may change in place)
                if watch is not None:
                    watch.watch(copy, _n)
                return copy
            return None
        handles.append(m.register_forward_hook(hook))
    try:
        if watch is not None:
            with watch:
                out = logits_of(model, x)
        else:
            out = logits_of(model, x)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in (layers or []) if n not in seen]
    if missing:
        raise ConfigError(f"layer(s) {missing} returned no tensor in the model's forward pass (not run, or a "
                          "tuple/dict output); choose layers whose output is one tensor")
    rect = watch.rectified if watch is not None else {}
    return out, [(n, mod, rect.get(n, o)) for n, (mod, o) in seen.items()]


# ----------------------------------------------------------------------------------------------
# feature maps: (N, C, *spatial) tensors and token sequences read on their patch grid
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureLayer:
    """A layer whose output GradCAM reads as a feature map.

    ``prefix``/``grid`` are set for token maps ``(N, prefix + h*w, D)``; ``rectified`` when the
    network's own ReLU of the output is used.
    """

    name: str
    type: str
    tokens: bool = False
    prefix: int = 0
    grid: tuple[int, ...] = ()
    rectified: bool = False

    def describe(self) -> str:
        extra = []
        if self.tokens:
            extra.append(f"tokens on a {'x'.join(map(str, self.grid))} grid, {self.prefix} class token(s) dropped")
        if self.rectified:
            extra.append("after the network's ReLU")
        return f"{self.name} ({self.type})" + (f", {'; '.join(extra)}" if extra else "")


def token_grid(n_tokens: int, grid: tuple[int, ...] | None = None) -> tuple[int, tuple[int, int]] | None:
    """``(prefix, (h, w))`` when ``n_tokens`` = prefix + h*w with at most 2 prefix tokens (a square
    grid unless ``grid`` gives the patch grid), else None."""
    for prefix in (0, 1, 2):
        rest = n_tokens - prefix
        if grid is not None and len(grid) == 2:
            if rest == grid[0] * grid[1] and rest > 1:
                return prefix, (int(grid[0]), int(grid[1]))
            continue
        side = math.isqrt(max(rest, 0))
        if side > 1 and side * side == rest:
            return prefix, (side, side)
    return None


def as_spatial(act: torch.Tensor, layer: FeatureLayer) -> torch.Tensor:
    """``(..., N, C, *spatial)`` view of a captured output (token maps: patch tokens on their grid)."""
    if not layer.tokens:
        return act
    patches = act[..., layer.prefix:, :]
    return patches.transpose(-1, -2).reshape(*patches.shape[:-2], patches.shape[-1], *layer.grid)


def _probe(model: nn.Module, x1: torch.Tensor):
    """One forward pass (with autograd) on one input, every module's tensor output recorded in
    completion order: ``(logits, [(name, module, output), ...])``."""
    check_hookable(model, "gradcam")
    records: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = []
    for n, m in model.named_modules():
        def hook(mod, inputs, output, _n=n):
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                records.append((_n, mod, output))
                return output.clone()
            return None
        handles.append(m.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            out = logits_of(model, x1.detach().clone().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    return out, records


def rectifies(model: nn.Module, x1: torch.Tensor, name: str) -> bool:
    """Whether the network passes the output of layer ``name`` directly to a ReLU."""
    watch = _Rectified()
    module = find_module(model, name)
    done = []

    def hook(mod, inputs, output):
        if not done and isinstance(output, torch.Tensor):
            done.append(True)
            copy = output.clone()
            watch.watch(copy, name)
            return copy
        return None

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad(), watch:
            logits_of(model, x1)
    finally:
        handle.remove()
    return name in watch.rectified


def _conv_grid(records, upto: int) -> tuple[int, ...] | None:
    convs = [o for _, m, o in records[:upto + 1] if isinstance(m, CONVS)]
    return tuple(convs[-1].shape[2:]) if convs else None


def default_feature_layer(model: nn.Module, x: torch.Tensor) -> FeatureLayer:
    """GradCAM's default layer for ``model`` on inputs like ``x`` (see the module docstring)."""
    out, records = _probe(model, x[:1])
    convs = [i for i, (_, m, _) in enumerate(records) if isinstance(m, CONVS)]
    if not convs:
        raise NotApplicableError("gradcam needs a convolutional layer (or a vision transformer's patch embedding) to find "
                          "its default feature map, and the model ran none; pass layer=NAME with a layer whose output "
                          "is (N, C, h, w) or a token sequence (N, T, D)")
    after = records[convs[-1]:]
    spatial = tuple(after[0][2].shape[2:])
    if len(spatial) == 2:
        tokens = [(n, m, o) for n, m, o in after if o.dim() == 3 and not isinstance(m, nn.Linear)
                  and token_grid(o.shape[1], spatial) is not None]
        if tokens:
            grads = torch.autograd.grad(out[0, out[0].argmax()], [o for _, _, o in tokens], allow_unused=True)
            for (n, m, o), g in reversed(list(zip(tokens, grads))):
                prefix, grid = token_grid(o.shape[1], spatial)
                if g is not None and bool(g[:, prefix:].abs().amax() > 0):
                    return FeatureLayer(n, type(m).__name__, tokens=True, prefix=prefix, grid=grid)
            raise NotApplicableError("gradcam found token maps after the patch embedding, but the target logit depends on "
                              "the patch tokens at none of them; pass layer=NAME")
    name, module = [(n, m) for n, m, o in after if o.dim() == 2 + len(spatial) and tuple(o.shape[2:]) == spatial
                    and not isinstance(m, POOLS)][-1]
    return FeatureLayer(name, type(module).__name__, rectified=rectifies(model, x[:1].detach(), name))


def feature_layer(model: nn.Module, x: torch.Tensor, name: str | None) -> FeatureLayer:
    """The named layer read as a feature map, or the default rule's layer when ``name`` is None.

    A named layer's own output is used as it is (no rectification added): ``(N, C, *spatial)``
    with the input's number of dimensions, or a token sequence ``(N, [1-2 class tokens +] h*w, D)``
    for image inputs (the grid of the last convolution before it, else a square one).
    """
    if name is None:
        return default_feature_layer(model, x)
    module = find_module(model, name)
    _, records = _probe(model, x[:1])
    idx = next((i for i, (n, _, _) in enumerate(records) if n == name), None)
    if idx is None:
        raise ConfigError(f"layer {name!r} returned no tensor in the model's forward pass (not run, or a tuple/dict "
                          "output); choose a layer whose output is one tensor")
    act = records[idx][2]
    if act.dim() == x.dim() and act.dim() >= 3:
        return FeatureLayer(name, type(module).__name__)
    if act.dim() == 3 and x.dim() == 4:
        tg = token_grid(act.shape[1], _conv_grid(records, idx))
        if tg is not None:
            return FeatureLayer(name, type(module).__name__, tokens=True, prefix=tg[0], grid=tg[1])
    raise ConfigError(f"layer {name!r} returns shape {tuple(act.shape)}, which cannot be read as a spatial map of "
                      f"inputs shaped {tuple(x.shape)}: choose a layer with output (N, C, h, w) (or (N, C, L) for "
                      "1-D inputs), or a vision transformer's token sequence (N, [class token +] h*w, D)")
