"""Image operations shared by several parts of sanitas."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sanitas.errors import ConfigError


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images, channel by channel.

    Kernel ``exp(-t^2 / (2 sigma^2))`` for ``|t| <= ceil(3 sigma)`` (clipped to ``size - 1`` per
    axis), normalised to sum 1; borders are mirrored without repeating the edge pixel
    (``torch`` "reflect" padding, scipy's "mirror" mode).
    """
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ConfigError(f"blur_sigma must be a positive number of pixels, got {sigma!r}")
    n, c, h, w = x.shape
    out = x
    for axis, size in ((3, w), (2, h)):
        radius = min(int(math.ceil(3 * sigma)), size - 1)
        if radius <= 0:
            continue
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-t ** 2 / (2 * sigma ** 2))
        k = k / k.sum()
        if axis == 3:
            out = F.pad(out, (radius, radius, 0, 0), mode="reflect")
            out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        else:
            out = F.pad(out, (0, 0, radius, radius), mode="reflect")
            out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out
