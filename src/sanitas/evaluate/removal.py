"""Building blocks of the decision-flip metric: the map per pixel, the removal order, what a
removed pixel becomes, and the perturbed images (conventions in :mod:`sanitas.evaluate.perturbation`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sanitas.errors import ConfigError, InputError
from sanitas.utils.image import gaussian_blur

REMOVAL_ORDERS = ("-s", "+s")
REMOVALS = ("zero", "mean", "blur")
CHANNEL_REDUCTIONS = ("sum", "abs_sum", "max", "mean")


def reduce_map(maps: torch.Tensor, channel_reduce: str | Callable = "sum") -> torch.Tensor:
    """Reduce ``(N, C, H, W)`` maps to one saliency value per pixel, ``(N, H, W)``.

    ``"sum"`` (default): signed sum over channels; ``"abs_sum"``: sum of absolute values;
    ``"max"``: maximum over channels; ``"mean"``: mean (same ordering as ``"sum"``); or a callable
    ``(N, C, H, W) -> (N, H, W)``. ``(N, H, W)`` maps are returned unchanged.
    """
    if maps.dim() == 3:
        return maps
    if callable(channel_reduce):
        out = channel_reduce(maps)
        if not isinstance(out, torch.Tensor) or out.shape != (maps.shape[0], *maps.shape[2:]):
            raise ConfigError(f"channel_reduce callable must map (N, C, H, W) to (N, H, W) = "
                              f"{(maps.shape[0], *maps.shape[2:])}, got "
                              f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return out
    if channel_reduce == "sum":
        return maps.sum(1)
    if channel_reduce == "abs_sum":
        return maps.abs().sum(1)
    if channel_reduce == "max":
        return maps.amax(1)
    if channel_reduce == "mean":
        return maps.mean(1)
    raise ConfigError(f"unknown channel_reduce {channel_reduce!r}: use one of {CHANNEL_REDUCTIONS} or a callable")


def check_maps(maps, x: torch.Tensor, channel_reduce, what: str = "maps") -> torch.Tensor:
    """Validated ``(N, H, W)`` float64 saliency on x's device."""
    if not isinstance(maps, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor shaped (N, C, H, W) or (N, H, W), got {type(maps).__name__}")
    n, c, h, w = x.shape
    if maps.dim() not in (3, 4):
        raise InputError(f"{what} must be shaped (N, C, H, W) or (N, H, W) like the images {tuple(x.shape)}, "
                         f"got shape {tuple(maps.shape)}")
    if maps.shape[0] != n or tuple(maps.shape[-2:]) != (h, w):
        raise InputError(f"{what} shape {tuple(maps.shape)} does not match the images {tuple(x.shape)}: need "
                         f"{n} maps of spatial size {h}x{w} (upsample lower-resolution maps to the image size first)")
    if maps.dim() == 4 and maps.shape[1] not in (1, c):
        raise InputError(f"{what} have {maps.shape[1]} channels but the images have {c}; pass maps with {c} "
                         "channels, one channel, or shaped (N, H, W)")
    if maps.is_complex() or maps.dtype == torch.bool:
        raise InputError(f"{what} must be real numbers, got {maps.dtype}")
    maps = maps.detach().to(device=x.device, dtype=torch.float64)
    bad = ~torch.isfinite(maps)
    if bad.any():
        first = int(bad.flatten(1).any(1).nonzero()[0])
        raise InputError(f"{what} contain {int(bad.sum())} NaN or infinite values (first in map {first}); "
                         "fix the attribution method or replace them, e.g. torch.nan_to_num(maps)")
    s = reduce_map(maps, channel_reduce)
    if not torch.isfinite(s).all():
        raise InputError(f"{what} become non-finite after channel reduction {channel_reduce!r}")
    return s


def check_order(order: str) -> str:
    if order not in REMOVAL_ORDERS:
        raise ConfigError(f"unknown order {order!r}: use '-s' (least salient first) or '+s' (most salient first)")
    return order


def removal_order(s: torch.Tensor, order: str = "-s") -> torch.Tensor:
    """Pixel ranks ``(N, H*W)`` (int64): ``rank[n, p]`` is the step at which pixel ``p`` is removed.

    Stable: equal saliency is removed in raster order in both orders (see the module docstring).
    """
    check_order(order)
    flat = s.flatten(1)
    key = flat if order == "-s" else -flat
    perm = torch.sort(key, dim=1, stable=True).indices
    ranks = torch.empty_like(perm)
    ranks.scatter_(1, perm, torch.arange(flat.shape[1], device=flat.device).expand_as(perm))
    return ranks


def removal_name(removal) -> str:
    if isinstance(removal, str):
        return removal
    if isinstance(removal, torch.Tensor):
        return "tensor"
    return f"constant({float(removal)})"


def removal_reference(x: torch.Tensor, removal="zero", blur_sigma: float | None = None) -> torch.Tensor:
    """What each pixel becomes when removed: a tensor broadcastable to ``x`` (see module docstring)."""
    if isinstance(removal, str):
        if removal == "zero":
            return torch.zeros((1, 1, 1, 1), dtype=x.dtype, device=x.device)
        if removal == "mean":
            return x.mean(dim=(2, 3), keepdim=True)
        if removal == "blur":
            sigma = min(x.shape[2], x.shape[3]) / 14.0 if blur_sigma is None else float(blur_sigma)
            return gaussian_blur(x, sigma)
        raise ConfigError(f"unknown removal {removal!r}: use one of {REMOVALS}, a number, or a reference tensor")
    if isinstance(removal, torch.Tensor):
        try:
            torch.broadcast_shapes(removal.shape, x.shape)
        except RuntimeError as exc:
            raise InputError(f"removal reference of shape {tuple(removal.shape)} does not broadcast to the images "
                             f"{tuple(x.shape)}") from exc
        ref = removal.detach().to(device=x.device, dtype=x.dtype)
        if not torch.isfinite(ref).all():
            raise InputError("removal reference tensor contains NaN or infinite values")
        while ref.dim() < 4:
            ref = ref.unsqueeze(0)
        return ref
    if isinstance(removal, (int, float)) and not isinstance(removal, bool) and math.isfinite(removal):
        return torch.full((1, 1, 1, 1), float(removal), dtype=x.dtype, device=x.device)
    raise ConfigError(f"removal must be one of {REMOVALS}, a finite number or a tensor, got {removal!r}")


def perturb(x: torch.Tensor, ref: torch.Tensor, ranks: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Images at the given levels: ``x`` with pixels of rank ``< level`` replaced by ``ref``.

    ``x``: ``(B, C, H, W)``; ``ref``: broadcastable to it; ``ranks``: ``(B, H*W)``; ``level``: ``(B,)``.
    """
    b, c, h, w = x.shape
    mask = (ranks < level.view(-1, 1).to(ranks.dtype)).view(b, 1, h, w)
    return torch.where(mask, ref, x)


def rank_table(ranks: torch.Tensor) -> torch.Tensor:
    return ranks.to(torch.int32) if ranks.shape[1] < 2 ** 31 else ranks

