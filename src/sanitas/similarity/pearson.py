"""Pearson correlation, batched: the core that Spearman (on ranks) and HOG (on features) reuse."""

from __future__ import annotations

import math
from typing import Any

import torch

from sanitas.errors import ConfigError
from sanitas.similarity.base import Similarity, nan_where, work_dtype
from sanitas.similarity.registry import register_similarity

__all__ = ["Pearson", "pearson_rows"]


def pearson_rows(u: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation of each row of ``u`` with the same row of ``v`` (shapes ``(N, M)``).

    ``mask`` (bool ``(N, M)``): use only the selected elements of each row. A row where either
    side is constant over the selected elements, or fewer than two elements are selected, gives
    NaN (decided exactly by max == min, not by a variance that rounding can make tiny but
    non-zero). Two-pass (centre, then dot products) in float64; clamped to [-1, 1].
    """
    dtype = work_dtype(u.device)
    u, v = u.to(dtype), v.to(dtype)
    if mask is None:
        mu, mv = u.mean(dim=1, keepdim=True), v.mean(dim=1, keepdim=True)
        du, dv = u - mu, v - mv
        degenerate = (u.amax(dim=1) == u.amin(dim=1)) | (v.amax(dim=1) == v.amin(dim=1)) | (u.shape[1] < 2)
    else:
        w = mask.to(dtype)
        count = w.sum(dim=1, keepdim=True)
        safe = count.clamp(min=1)
        du = (u - (u * w).sum(dim=1, keepdim=True) / safe) * w
        dv = (v - (v * w).sum(dim=1, keepdim=True) / safe) * w
        inf = torch.tensor(math.inf, dtype=dtype, device=u.device)

        def flat(t: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, t, inf).amin(dim=1) == torch.where(mask, t, -inf).amax(dim=1)

        degenerate = flat(u) | flat(v) | (count.squeeze(1) < 2)
    num = (du * dv).sum(dim=1)
    den = du.square().sum(dim=1).sqrt() * dv.square().sum(dim=1).sqrt()
    den = torch.where(degenerate, torch.ones_like(den), den)
    return nan_where(degenerate, (num / den).clamp(-1.0, 1.0))


@register_similarity
class Pearson(Similarity):
    """Pearson correlation of the two maps over all elements (signed, or of |map| with absolute=True)."""

    name = "pearson"
    description = "Pearson correlation of the two maps over all elements"

    def __init__(self, *, absolute: bool = False):
        if not isinstance(absolute, bool):
            raise ConfigError(f"absolute must be True or False; got {absolute!r}")
        super().__init__(absolute=absolute)
        self.absolute = absolute

    def _score(self, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None, baseline: Any) -> torch.Tensor:
        u, v = a.flatten(1), b.flatten(1)
        if self.absolute:
            u, v = u.abs(), v.abs()
        return pearson_rows(u, v)
