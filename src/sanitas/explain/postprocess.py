"""Explicit, named post-processing of maps. The raw signed map is always what methods return."""

from __future__ import annotations

import torch

from sanitas.errors import ConfigError


def reduce_channels(maps: torch.Tensor, how: str = "sum", channel_dim: int = -3) -> torch.Tensor:
    """Collapse the channel axis: 'sum', 'abs_sum', 'max', 'abs_max', 'mean', 'l2'. Keeps the axis (size 1)."""
    ops = {
        "sum": lambda m: m.sum(channel_dim, keepdim=True),
        "abs_sum": lambda m: m.abs().sum(channel_dim, keepdim=True),
        "max": lambda m: m.amax(channel_dim, keepdim=True),
        "abs_max": lambda m: m.abs().amax(channel_dim, keepdim=True),
        "mean": lambda m: m.mean(channel_dim, keepdim=True),
        "l2": lambda m: m.pow(2).sum(channel_dim, keepdim=True).sqrt(),
    }
    if how not in ops:
        raise ConfigError(f"unknown channel reduction {how!r}: use one of {sorted(ops)}")
    return ops[how](maps)


def absolute(maps: torch.Tensor) -> torch.Tensor:
    return maps.abs()


def _per_map(maps: torch.Tensor, dims: int) -> torch.Tensor:
    return maps.flatten(-dims)


def normalize_minmax(maps: torch.Tensor, dims: int = 3) -> torch.Tensor:
    """Rescale each map (over its last ``dims`` axes) to [0, 1]; constant maps become 0."""
    flat = _per_map(maps, dims)
    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    return ((flat - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))).reshape(maps.shape)


def normalize_maxabs(maps: torch.Tensor, dims: int = 3) -> torch.Tensor:
    """Divide each map by its largest absolute value (sign kept; all-zero maps stay 0)."""
    flat = _per_map(maps, dims)
    m = flat.abs().max(-1, keepdim=True).values
    return (flat / torch.where(m > 0, m, torch.ones_like(m))).reshape(maps.shape)


def normalize_rms(maps: torch.Tensor, dims: int = 3) -> torch.Tensor:
    """Divide each map by the square root of its mean square (Binder et al. 2023)."""
    flat = _per_map(maps, dims)
    m = flat.pow(2).mean(-1, keepdim=True).sqrt()
    return (flat / torch.where(m > 0, m, torch.ones_like(m))).reshape(maps.shape)


def clip_percentile(maps: torch.Tensor, q: float = 99.0, dims: int = 3) -> torch.Tensor:
    """Clip |map| at its q-th percentile (per map), as the papers' visualizations do."""
    flat = _per_map(maps, dims)
    t = torch.quantile(flat.abs().float(), q / 100.0, dim=-1, keepdim=True).to(flat.dtype)
    return torch.maximum(torch.minimum(flat, t), -t).reshape(maps.shape)


def visualize(maps: torch.Tensor, style: str = "absolute", channel_reduce: str = "sum", q: float = 99.0):
    """Display-ready maps (N, H, W) or (N, 2, H, W):

    * 'absolute': |channel-sum|, clipped at the q-th percentile, scaled to [0, 1] (adebayo2018);
    * 'diverging': signed channel-sum divided by its clipped max-abs, in [-1, 1];
    * 'two_channel': positive and negative parts as two [0, 1] channels (sundararajan2019's
      sign-preserving visualization).
    """
    m = reduce_channels(maps, channel_reduce)[..., 0, :, :]
    if style == "absolute":
        return normalize_minmax(clip_percentile(m.abs(), q, 2).abs(), 2)
    if style == "diverging":
        return normalize_maxabs(clip_percentile(m, q, 2), 2)
    if style == "two_channel":
        s = normalize_maxabs(clip_percentile(m, q, 2), 2)
        return torch.stack([s.clamp_min(0), (-s).clamp_min(0)], dim=-3)
    raise ConfigError(f"unknown visualization style {style!r}: use 'absolute', 'diverging' or 'two_channel'")
