"""Structural similarity (SSIM) of two maps as 2-D images, batched with separable ``conv2d``.

adebayo2018 (appendix B) uses skimage's SSIM with a window of 5 on maps "without absolute values".
sanitas computes the same quantity as ``skimage.metrics.structural_similarity`` on 2-D images,
never on flattened 1-D vectors (a known fault of Quantus' MPRT, where the "window" then runs
along a raster line and mixes unrelated pixels).

Preprocessing (see :mod:`sanitas.similarity.preprocess`), defaults: no absolute value and a
signed sum over channels (adebayo2018: SSIM "without absolute values"), then each map min-max
rescaled to [0, 1] with ``data_range=1``. adebayo2018 does not state how it scaled maps for SSIM
(it gives [-1, 1] for its HOG inputs and random masks); [0, 1] is sanitas' choice, and
``rescale="symmetric"`` gives [-1, 1] with ``data_range=2`` (only SSIM's luminance term differs).
Some rescaling is needed: without it the score depends on a map's overall scale (a randomized
network's gradients can be orders of magnitude smaller), through the constants
C1 = (K1 R)^2, C2 = (K2 R)^2.

The window: ``window`` (odd, default 5) pixels square, uniform (skimage's default) or, with
``gaussian=True``, a Gaussian of standard deviation ``sigma`` truncated to the window and
normalised. Local means, variances and covariance use that window; the sample-covariance factor
``NP / (NP - 1)`` with ``NP = window**2`` applies when ``sample_covariance=True`` (skimage's
default). The SSIM image is averaged over the positions where the window lies fully inside the
map (skimage crops ``(window - 1) // 2`` pixels on each side), so no padding convention enters.

Agreement with skimage: uniform windows match ``structural_similarity(win_size=window)``;
Gaussian windows match ``gaussian_weights=True, sigma=sigma, win_size=window`` whenever
``window == 2 * int(3.5 * sigma + 0.5) + 1`` (skimage always truncates its Gaussian at 3.5
sigma and uses ``win_size`` only for the crop and the covariance factor; e.g. window 11 with sigma
1.5, Wang et al.'s setting, or window 5 with sigma 0.5).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from sanitas.errors import ConfigError, InputError
from sanitas.similarity.base import Similarity, nan_where, work_dtype
from sanitas.similarity.preprocess import REDUCTIONS, RESCALES, check_choice, prepare_maps, rescale_range
from sanitas.similarity.registry import register_similarity

__all__ = ["SSIM", "ssim"]


def _window_1d(window: int, gaussian: bool, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if not gaussian:
        return torch.full((window,), 1.0 / window, dtype=dtype, device=device)
    r = window // 2
    t = torch.arange(-r, r + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float, window: int = 5, gaussian: bool = False,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03, sample_covariance: bool = True) -> torch.Tensor:
    """Mean SSIM of each image pair; ``x``, ``y`` shaped ``(B, H, W)`` (or ``(B, C, H, W)``: SSIM per
    channel, then the mean over channels). Returns ``(B,)``. No preprocessing, no NaN policy:
    this is the plain formula of Wang et al. (2004) as skimage computes it."""
    if x.ndim == 3:
        x, y = x.unsqueeze(1), y.unsqueeze(1)
    bsz, ch, h, w = x.shape
    if window > min(h, w):
        raise InputError(f"the SSIM window ({window}) is larger than the {h}x{w} maps; pass an odd window "
                         f"<= {min(h, w)}, e.g. get_similarity('ssim', window={max(1, min(h, w) // 2 * 2 - 1)})")
    dtype = work_dtype(x.device)
    x = x.reshape(bsz * ch, 1, h, w).to(dtype)
    y = y.reshape(bsz * ch, 1, h, w).to(dtype)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B*C, 5, H, W)
    k = _window_1d(window, gaussian, sigma, dtype, x.device)
    # Valid convolution: exactly the positions skimage keeps after cropping (window - 1) // 2.
    f = F.conv2d(stack, k.view(1, 1, window, 1).expand(5, 1, window, 1), groups=5)
    f = F.conv2d(f, k.view(1, 1, 1, window).expand(5, 1, 1, window), groups=5)
    ux, uy, uxx, uyy, uxy = f.unbind(dim=1)
    n_pix = window * window
    cov_norm = n_pix / (n_pix - 1) if sample_covariance and n_pix > 1 else 1.0
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1).view(bsz, ch).mean(dim=1)


@register_similarity
class SSIM(Similarity):
    """Structural similarity of the maps as images (window 5 as adebayo2018; signed channel sum, min-max to [0, 1])."""

    name = "ssim"
    needs_images = True
    description = "Mean structural similarity (SSIM) of the two maps as 2-D images"

    def __init__(self, *, window: int | None = 5, gaussian: bool = False, sigma: float = 1.5,
                 data_range: float | None = None, k1: float = 0.01, k2: float = 0.03,
                 sample_covariance: bool = True, absolute: bool = False, reduce: str = "sum",
                 rescale: str = "minmax"):
        for opt, val in (("gaussian", gaussian), ("sample_covariance", sample_covariance), ("absolute", absolute)):
            if not isinstance(val, bool):
                raise ConfigError(f"{opt} must be True or False; got {val!r}")
        if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
            raise ConfigError(f"sigma must be a positive number; got {sigma!r}")
        if window is None:
            if not gaussian:
                raise ConfigError("window=None is only meaningful with gaussian=True (then 2*int(3.5*sigma+0.5)+1, "
                                  "as skimage); give the uniform window's size, e.g. window=5")
            window = 2 * int(3.5 * sigma + 0.5) + 1
        if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
            raise ConfigError(f"window must be an odd positive integer (e.g. 5 or 7); got {window!r}")
        for opt, val in (("k1", k1), ("k2", k2)):
            if not isinstance(val, (int, float)) or isinstance(val, bool) or val < 0:
                raise ConfigError(f"{opt} must be a non-negative number; got {val!r}")
        reduce = check_choice("reduce", reduce, REDUCTIONS)
        rescale = check_choice("rescale", rescale, RESCALES)
        if data_range is None:
            data_range = rescale_range(rescale)
            if data_range is None:
                raise ConfigError("with rescale='none' the maps' range is unknown: pass data_range explicitly "
                                  "(the difference between the largest and smallest possible map value)")
        if not isinstance(data_range, (int, float)) or isinstance(data_range, bool) or not data_range > 0 \
                or not math.isfinite(data_range):
            raise ConfigError(f"data_range must be a positive number; got {data_range!r}")
        super().__init__(window=window, gaussian=gaussian, sigma=float(sigma), data_range=float(data_range),
                         k1=float(k1), k2=float(k2), sample_covariance=sample_covariance, absolute=absolute,
                         reduce=reduce, rescale=rescale)
        self.window, self.gaussian, self.sigma = window, gaussian, float(sigma)
        self.data_range, self.k1, self.k2 = float(data_range), float(k1), float(k2)
        self.sample_covariance, self.absolute, self.reduce, self.rescale = sample_covariance, absolute, reduce, rescale

    def _score(self, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None, baseline: Any) -> torch.Tensor:
        pa, ca = prepare_maps(a, absolute=self.absolute, reduce=self.reduce, rescale=self.rescale)
        pb, cb = prepare_maps(b, absolute=self.absolute, reduce=self.reduce, rescale=self.rescale)
        s = ssim(pa, pb, data_range=self.data_range, window=self.window, gaussian=self.gaussian, sigma=self.sigma,
                 k1=self.k1, k2=self.k2, sample_covariance=self.sample_covariance)
        return nan_where(ca | cb, s)
