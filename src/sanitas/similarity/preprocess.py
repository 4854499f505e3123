"""Turning an attribution map into the image that SSIM and HOG compare.

Three steps, in this order, each an option of the metrics that use it:

1. ``absolute``: take ``|map|`` element-wise (default off: adebayo2018 computes SSIM and HOG "without
   absolute values").
2. ``reduce``: channel reduction to one 2-D map per image: ``"sum"`` (default; signed sum over
   channels, what a diverging visualisation shows), ``"mean"``, ``"max_abs"`` (largest ``|value|``
   over channels, Simonyan et al.'s saliency; always non-negative) or ``"none"`` (keep channels;
   SSIM then averages over channels like skimage's ``channel_axis``, HOG takes the channel with the
   largest gradient like skimage's multichannel HOG).
3. ``rescale``: per map, over all its pixels (and channels): ``"minmax"`` to [0, 1],
   ``"symmetric"`` min-max to [-1, 1] (the range adebayo2018 gives for its HOG inputs and random
   masks), ``"maxabs"`` divides by max ``|value|`` (zero stays zero, result in [-1, 1]), or
   ``"none"``.

A map that is constant after step 2 carries no structure and cannot be min-max scaled; it is
flagged so the metric returns NaN for that image.
"""

from __future__ import annotations

import torch

from sanitas.errors import ConfigError
from sanitas.similarity.base import work_dtype

__all__ = ["REDUCTIONS", "RESCALES", "prepare_maps", "check_choice", "rescale_range"]

REDUCTIONS = ("sum", "mean", "max_abs", "none")
RESCALES = ("minmax", "symmetric", "maxabs", "none")


def check_choice(option: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def rescale_range(rescale: str) -> float | None:
    """The data range of maps after ``rescale`` (None for ``"none"``: unknown)."""
    return {"minmax": 1.0, "symmetric": 2.0, "maxabs": 2.0, "none": None}[rescale]


def prepare_maps(maps: torch.Tensor, *, absolute: bool, reduce: str, rescale: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prepared, constant)``: maps ``(N, C', H, W)`` in the working dtype (C' = 1 unless
    ``reduce="none"``) and a bool ``(N,)`` marking maps that are constant after reduction
    (their prepared values are zeros and must not be scored)."""
    m = maps.to(work_dtype(maps.device))
    if absolute:
        m = m.abs()
    if reduce == "sum":
        m = m.sum(dim=1, keepdim=True)
    elif reduce == "mean":
        m = m.mean(dim=1, keepdim=True)
    elif reduce == "max_abs":
        m = m.abs().amax(dim=1, keepdim=True)
    flat = m.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    constant = hi == lo
    shape = (-1,) + (1,) * (m.ndim - 1)
    if rescale in ("minmax", "symmetric"):
        span = torch.where(constant, torch.ones_like(hi), hi - lo)
        m = (m - lo.view(shape)) / span.view(shape)
        if rescale == "symmetric":
            m = 2 * m - 1
    elif rescale == "maxabs":
        top = flat.abs().amax(dim=1)
        m = m / torch.where(top > 0, top, torch.ones_like(top)).view(shape)
    m = torch.where(constant.view(shape), torch.zeros_like(m), m)
    return m, constant
