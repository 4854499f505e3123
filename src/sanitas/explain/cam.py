"""GradCAM and guided GradCAM, on CNN feature maps and on vision-transformer token maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sanitas.errors import ConfigError, NotApplicableError
from sanitas.explain._core import vjp
from sanitas.explain.base import Explainer
from sanitas.explain.capture import FeatureLayer, as_spatial, capture, feature_layer
from sanitas.explain.forward import call_cache
from sanitas.explain.modified_backprop import GuidedBackprop

_MODES = {"bilinear": ("linear", "bilinear", "trilinear"), "nearest": ("nearest",) * 3,
          "bicubic": (None, "bicubic", None)}


def upsample(maps: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``(..., *spatial)`` maps (1-3 spatial axes, as many as ``size`` has) to ``size``.

    ``mode``: 'bilinear' (linear / bilinear / trilinear by the number of axes, align_corners=False),
    'nearest' or 'bicubic' (2-D only).
    """
    if mode not in _MODES:
        raise ConfigError(f"unknown upsampling {mode!r}: use 'bilinear' or 'nearest'")
    size = tuple(int(s) for s in size)
    d = len(size)
    how = _MODES[mode][d - 1] if 1 <= d <= 3 else None
    if how is None:
        raise ConfigError(f"cannot upsample {d}-d maps with {mode!r}")
    lead = maps.shape[:-d]
    flat = maps.reshape(-1, 1, *maps.shape[-d:])
    kw = {"align_corners": False} if how != "nearest" else {}
    out = F.interpolate(flat, size=size, mode=how, **kw)
    return out.reshape(*lead, *out.shape[2:])


class GradCAM(Explainer):
    """GradCAM (Selvaraju et al. 2017): ReLU(sum_c alpha_c A_c), alpha_c = spatial mean of dy/dA_c.

    ``layer``: module name; by default the rule of :mod:`sanitas.explain.capture`: the rectified
    feature map of the last convolution (``layer4`` of a ResNet, the ReLU after the last conv of a
    VGG), or for a vision transformer the input normalization of its last block, read on the patch
    grid without the class token. :meth:`describe` says which layer a model gets. The ``h x w``
    map is upsampled bilinearly (linearly for 1-D inputs) to the input size and repeated over the
    input's channels. ``relu=False`` keeps the signed map.
    """

    name = "gradcam"
    per_image = True
    tuple_inputs = False
    defaults = {"layer": None, "relu": True, "interpolation": "bilinear"}

    def validate(self):
        if self.layer is not None:  # an nn.Sequential's layer names are numbers: gradcam(layer=2)
            self.layer = str(self.layer)

    def feature_layer(self, model, x) -> FeatureLayer:
        """The layer this explainer reads on ``model`` (resolved once per call)."""
        cache = call_cache()
        key = ("feature_layer", self.layer, tuple(x.shape[1:]))
        if cache is not None and key in cache:
            return cache[key]
        layer = feature_layer(model, x, self.layer)
        if cache is not None:
            cache[key] = layer
        return layer

    def describe(self, model, x) -> dict:
        return {"layer": self.feature_layer(model, x).describe()}

    def layer_maps(self, model, x, G):
        """``(B, N, *spatial)`` maps at the layer's resolution."""
        if x.dim() < 3:
            raise NotApplicableError(f"{self.name} needs inputs with a spatial layout, (N, C, H, W) or (N, C, L); got shape "
                              f"{tuple(x.shape)}")
        layer = self.feature_layer(model, x)
        xg = x.detach().clone().requires_grad_(True)
        out, seen = capture(model, xg, [layer.name], rectify=layer.rectified)
        act = seen[0][2]
        (g,) = vjp(out, act, G)
        a, g = as_spatial(act.detach(), layer), as_spatial(g, layer)
        weights = g.mean(dim=tuple(range(3, g.dim())), keepdim=True)
        cam = (weights * a.unsqueeze(0)).sum(2)
        return cam.clamp_min(0) if self.relu else cam

    def attribute(self, model, x, G):
        cam = upsample(self.layer_maps(model, x, G), x.shape[2:], self.interpolation)
        return cam.unsqueeze(2).expand(-1, -1, x.shape[1], *x.shape[2:]).contiguous()


class GuidedGradCAM(Explainer):
    """Guided GradCAM: guided backprop times the upsampled GradCAM map (same layer rule as ``gradcam``)."""

    name = "guided_gradcam"
    per_image = True
    tuple_inputs = False
    defaults = {"layer": None, "interpolation": "bilinear"}

    def validate(self):
        if self.layer is not None:
            self.layer = str(self.layer)

    def _cam(self) -> GradCAM:
        return GradCAM(layer=self.layer, interpolation=self.interpolation)

    def describe(self, model, x) -> dict:
        return self._cam().describe(model, x)

    def attribute(self, model, x, G):
        cam = self._cam().attribute(model, x, G)
        return GuidedBackprop().attribute(model, x, G) * cam
