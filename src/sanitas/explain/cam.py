"""GradCAM and guided GradCAM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sanitas.errors import ConfigError, UnknownNameError
from sanitas.explain._core import logits_of, vjp
from sanitas.explain.base import Explainer
from sanitas.explain.modified_backprop import GuidedBackprop


def find_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        import difflib

        close = difflib.get_close_matches(name, list(modules), n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        valid = ", ".join(n for n in modules if n)
        raise UnknownNameError(f"the model has no layer {name!r}.{hint} Layers: {valid}")
    return modules[name]


def capture(model: nn.Module, x: torch.Tensor, layers: list[str] | None, kinds: tuple = (nn.Conv2d,)):
    """Forward ``x`` and keep the outputs of the named layers (or of every module of ``kinds``).

    Returns ``(logits, [(name, module, output), ...])`` in forward order (a module called twice
    counts at its first call); outputs stay in the graph.
    """
    named = dict(model.named_modules())
    wanted = {n: find_module(model, n) for n in layers} if layers else {n: m for n, m in named.items() if isinstance(m, kinds)}
    seen: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = []
    for n, m in wanted.items():
        def hook(mod, inputs, output, _n=n):
            if isinstance(output, torch.Tensor) and all(s != _n for s, _, _ in seen):
                seen.append((_n, mod, output))
        handles.append(m.register_forward_hook(hook))
    try:
        out = logits_of(model, x)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in (layers or []) if n not in {s for s, _, _ in seen}]
    if missing:
        raise ConfigError(f"layer(s) {missing} were not run by the model's forward pass")
    return out, seen


def upsample(maps: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``(..., h, w)`` maps to ``size``; ``mode`` 'bilinear' (align_corners=False) or 'nearest'."""
    if mode not in ("bilinear", "nearest", "bicubic"):
        raise ConfigError(f"unknown upsampling {mode!r}: use 'bilinear' or 'nearest'")
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    kw = {"align_corners": False} if mode != "nearest" else {}
    out = F.interpolate(flat, size=tuple(size), mode=mode, **kw)
    return out.reshape(*lead, *out.shape[-2:])


class GradCAM(Explainer):
    """GradCAM (Selvaraju et al. 2017): ReLU(sum_c alpha_c A_c), alpha_c = spatial mean of dy/dA_c.

    ``layer``: module name (default: the last ``nn.Conv2d`` the forward pass runs; its output,
    before any following ReLU). The h x w map is upsampled bilinearly to the input size and
    repeated over the input's channels. ``relu=False`` keeps the signed map.
    """

    name = "gradcam"
    per_image = True
    defaults = {"layer": None, "relu": True, "interpolation": "bilinear"}

    def layer_maps(self, model, x, G):
        xg = x.detach().clone().requires_grad_(True)
        out, seen = capture(model, xg, [self.layer] if self.layer else None)
        if not seen:
            raise ConfigError("gradcam needs a convolutional layer: the model ran no nn.Conv2d; pass layer=NAME")
        name, _, act = seen[-1]
        if act.dim() != 4:
            raise ConfigError(f"gradcam layer {name!r} has output of shape {tuple(act.shape)}; "
                              "choose a layer with (N, C, h, w) outputs")
        (g,) = vjp(out, act, G)
        weights = g.mean(dim=(-1, -2), keepdim=True)
        cam = (weights * act.detach().unsqueeze(0)).sum(2)
        return cam.clamp_min(0) if self.relu else cam

    def attribute(self, model, x, G):
        cam = upsample(self.layer_maps(model, x, G), x.shape[-2:], self.interpolation)
        return cam.unsqueeze(2).expand(-1, -1, x.shape[1], -1, -1).contiguous()


class GuidedGradCAM(Explainer):
    """Guided GradCAM: guided backprop times the upsampled GradCAM map."""

    name = "guided_gradcam"
    per_image = True
    defaults = {"layer": None, "interpolation": "bilinear"}

    def attribute(self, model, x, G):
        cam = GradCAM(layer=self.layer, interpolation=self.interpolation).attribute(model, x, G)
        return GuidedBackprop().attribute(model, x, G) * cam
