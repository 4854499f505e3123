"""Hidden-layer attributions of grabska2020 (activity a^{h,l}, bias a^{b,l}) and FullGrad.

For a layer l with output h^l (the output of a Conv2d / Linear / BatchNorm module) and the
selected logit f_c:

* activity attribution  a^{h,l}_{ij} = sum_phi h^l_{ij phi} df_c/dh^l_{ij phi}    (Eq. 11)
* bias attribution      a^{b,l}_{ij} = sum_phi b^l_phi   df_c/dh^l_{ij phi}      (Eq. 12)

where b^l is the layer's bias; BatchNorm's implicit bias in eval mode is
beta - gamma * running_mean / sqrt(running_var + eps). For a piecewise-linear (ReLU,
max-pool) network, for every layer l that cuts the graph (every path from the input to the
output passes through it), f_c = sum_ij a^{h,l} + sum_{l' > l} sum_ij a^{b,l'} (Eq. 13);
``layer_decomposition`` returns the gross sums A^{h,l}, A^{b,l} (Eq. 14) to check it.

Saliency maps use Psi(a) = upsample(rescale(abs(a))), rescale = per-image min-max (Eq. 9-10);
aggregates sum Psi over a top-down set of layers (Eq. 16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sanitas.errors import ConfigError, NotApplicableError
from sanitas.explain._core import logits_of, vjp
from sanitas.explain.base import Explainer
from sanitas.explain.cam import upsample
from sanitas.explain.capture import capture
from sanitas.explain.postprocess import normalize_minmax as rescale

PARAM_KINDS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def layer_bias(module: nn.Module) -> torch.Tensor | None:
    """The additive bias of a layer's output (per output channel), BatchNorm's implicit one included."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_mean is None:
            raise ConfigError(f"BatchNorm layer without running statistics ({module}) has no fixed bias in eval mode")
        scale = module.weight if module.weight is not None else torch.ones_like(module.running_mean)
        shift = module.bias if module.bias is not None else torch.zeros_like(module.running_mean)
        return (shift - scale * module.running_mean / torch.sqrt(module.running_var + module.eps)).detach()
    b = getattr(module, "bias", None)
    return b.detach() if isinstance(b, torch.Tensor) else None


@dataclass
class LayerAttribution:
    name: str
    module: nn.Module
    activity: torch.Tensor          # (B, N, *spatial) summed over channels; (B, N) for Linear layers
    bias: torch.Tensor | None       # same shape, None when the layer has no bias
    activity_units: torch.Tensor    # (B, N, C, *spatial) before the channel sum
    bias_units: torch.Tensor | None  # (B, N, C, *spatial) b * df/dh before the channel sum


def layer_attributions(model: nn.Module, x: torch.Tensor, G: torch.Tensor, layers: list[str] | None = None,
                       kinds: tuple = PARAM_KINDS, with_input: bool = False):
    """One forward pass and one batched backward for all layers; returns (input_grad|None, [LayerAttribution])."""
    xg = x.detach().clone().requires_grad_(True)
    out, seen = capture(model, xg, layers, kinds)
    if not seen:
        kinds_txt = "/".join(k.__name__ for k in kinds)
        raise NotApplicableError("no layer to attribute: the model ran no " + kinds_txt + " module; this method needs "
                          "convolutional layers, or pass layers=[names]")
    inputs = [xg] + [o for _, _, o in seen]
    grads = vjp(out, inputs, G)
    res = []
    for (name, module, act), g in zip(seen, grads[1:]):
        units = act.detach().unsqueeze(0) * g
        b = layer_bias(module)
        bias = bias_units = None
        if b is not None:
            bias_units = b.view((1, 1, -1) + (1,) * (act.dim() - 2)) * g
            bias = bias_units.sum(2)
        res.append(LayerAttribution(name, module, units.sum(2), bias, units, bias_units))
    return (grads[0] if with_input else None), res


def layer_decomposition(model: nn.Module, x: torch.Tensor, target="predicted", layers: list[str] | None = None):
    """Gross sums per layer (Eq. 14), in forward order, for checking Eq. 13.

    Returns a dict with ``layers`` (names, index 0 is the input), ``A_h`` (N, L+1) and ``A_b``
    (N, L+1; 0 for the input), and ``logit`` (N,).
    """
    from sanitas.explain._core import check_images, eval_mode, model_device, resolve_target, selection

    check_images(x)
    x = x.detach().to(model_device(model))
    with eval_mode(model):
        with torch.no_grad():
            logits = logits_of(model, x)
        tgt = resolve_target(target, logits)
        if tgt is None:
            raise ConfigError("layer_decomposition explains one class per image; pass class indices or 'predicted'")
        G = selection(tgt, x.shape[0], logits.shape[1], x.device, x.dtype)
        gx, las = layer_attributions(model, x, G, layers, with_input=True)
    n = x.shape[0]
    a_h = [(x * gx[0]).reshape(n, -1).sum(1)] + [la.activity[0].reshape(n, -1).sum(1) for la in las]
    a_b = [torch.zeros_like(a_h[0])] + [la.bias[0].reshape(n, -1).sum(1) if la.bias is not None
                                        else torch.zeros_like(a_h[0]) for la in las]
    return {"layers": ["input"] + [la.name for la in las], "A_h": torch.stack(a_h, 1), "A_b": torch.stack(a_b, 1),
            "logit": logits[torch.arange(x.shape[0]), tgt]}


def psi(a: torch.Tensor, size, interpolation: str = "bilinear") -> torch.Tensor:
    """Psi(a) = upsample(rescale(abs(a))) for (..., *spatial) maps (grabska2020, Eq. 9 applied per layer)."""
    return upsample(rescale(a.abs(), len(size)), size, interpolation)


def _spatial_size(method: str, x: torch.Tensor) -> tuple[int, ...]:
    if x.dim() not in (3, 4):
        raise NotApplicableError(f"{method} builds maps from convolutional feature maps and needs inputs (N, C, H, W) or "
                          f"(N, C, L); got shape {tuple(x.shape)}")
    return tuple(x.shape[2:])


def _select_top(spatial: list[LayerAttribution], aggregate) -> list[LayerAttribution]:
    if aggregate == "all":
        return spatial
    if isinstance(aggregate, int) or (isinstance(aggregate, str) and aggregate.startswith("top-")):
        k = aggregate if isinstance(aggregate, int) else int(aggregate.split("-", 1)[1])
        if k < 1:
            raise ConfigError(f"aggregate top-k needs k >= 1, got {k}")
        return spatial[-k:]
    raise ConfigError(f"unknown aggregate {aggregate!r}: use 'all', 'top-K' (e.g. 'top-3') or an int")


class _LayerMap(Explainer):
    defaults = {"layer": None, "aggregate": "all", "include_input": False, "interpolation": "bilinear",
                "layers": None}
    kind = "activity"
    tuple_inputs = False

    def validate(self):
        if self.layers is not None and (isinstance(self.layers, (str, bytes)) or not list(self.layers)):
            raise ConfigError(f"{self.name}: layers must be a non-empty list of layer names, got {self.layers!r}; "
                              "leave it out (None) to use every layer")
        # an nn.Sequential's layer names are numbers: activity(layers=[0, 3]) reads them as ints
        if self.layer is not None:
            self.layer = str(self.layer)
        if self.layers is not None:
            self.layers = [str(name) for name in self.layers]

    def attribute(self, model, x, G):
        size = _spatial_size(self.name, x)
        spatial_dim = 2 + len(size)  # (B, N, *spatial)
        if self.layer is not None:
            _, las = layer_attributions(model, x, G, [self.layer])
            m = getattr(las[0], self.kind)
            if m is None:
                raise ConfigError(f"layer {self.layer!r} has no bias")
            if m.dim() != spatial_dim:
                raise ConfigError(f"layer {self.layer!r} has no spatial output (shape {tuple(m.shape)}); choose a "
                                  "convolutional layer")
            out = upsample(m, size, self.interpolation)
        else:
            gx, las = layer_attributions(model, x, G, self.layers, kinds=self.map_kinds, with_input=True)
            spatial = [la for la in las if getattr(la, self.kind) is not None
                       and getattr(la, self.kind).dim() == spatial_dim]
            if not spatial:
                raise NotApplicableError(f"{self.name}: the model has no convolutional layer with a {self.kind} map")
            chosen = _select_top(spatial, self.aggregate)
            out = sum(psi(getattr(la, self.kind), size, self.interpolation) for la in chosen)
            if self.include_input:
                out = out + psi((x.unsqueeze(0) * gx).sum(2), size, self.interpolation)
        return out.unsqueeze(2).expand(-1, -1, x.shape[1], *size).contiguous()


class Activity(_LayerMap):
    """Hidden-activity attributions a^{h,l} (grabska2020, Eq. 11); one layer (raw, signed, upsampled)
    or a top-down aggregate of Psi(a^{h,l}) over conv layers (Eq. 16: aggregate 'all' or 'top-K')."""

    map_kinds = (nn.Conv1d, nn.Conv2d)

    name = "activity"
    kind = "activity"


class Bias(_LayerMap):
    """Bias attributions a^{b,l} (grabska2020, Eq. 12), per layer or aggregated like ``activity``."""

    name = "bias"
    kind = "bias"
    map_kinds = (nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


class FullGrad(Explainer):
    """FullGrad (Srinivas & Fleuret 2019): Psi(|x * grad|) + sum over conv/BatchNorm layers of
    Psi(|b * df/dh|), with Psi = per-image min-max rescale over (C, *spatial), bilinear upsampling
    (align_corners=True as the reference code; linear for 1-D inputs) and a channel sum;
    BatchNorm's implicit bias included."""

    name = "fullgrad"
    per_image = True
    tuple_inputs = False
    defaults = {"interpolation": "bilinear"}

    def attribute(self, model, x, G):
        size = _spatial_size(self.name, x)
        nd = len(size)
        gx, las = layer_attributions(model, x, G, kinds=(nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d),
                                     with_input=True)
        total = rescale((x.unsqueeze(0) * gx).abs(), 1 + nd).sum(2)
        mode = self.interpolation if self.interpolation == "nearest" or nd == 2 else "linear"
        align = {"align_corners": True} if mode != "nearest" else {}
        for la in las:
            if la.bias_units is None or la.bias_units.dim() != 3 + nd:
                continue
            r = rescale(la.bias_units.abs(), 1 + nd)
            up = F.interpolate(r.reshape(-1, *r.shape[2:]), size=size, mode=mode, **align)
            total = total + up.reshape(*r.shape[:3], *size).sum(2)
        return total.unsqueeze(2).expand(-1, -1, x.shape[1], *size).contiguous()
