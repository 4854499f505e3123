"""Top-k intersection: the fraction of the k most important positions (by |value|) two maps share.

``k`` is a fraction of the positions (default 0.1, i.e. the top 10 %; the count is
``max(1, round(k * M))`` for ``M`` positions) or, as an integer >= 1, a count. Positions are the
``C x H x W`` elements of the map (``reduce="none"``, default), or pixels after a channel reduction
of ``|map|`` (``reduce="sum"``, ``"mean"`` or ``"max_abs"``).

The score is ``|top_k(a) & top_k(b)| / k`` in [0, 1]; two independent random maps give ``k / M``
on average (0.1 for the default), which is this metric's chance level. Ties at the k-th place
are broken by position (the earlier element of the flattened map wins), so the score is
deterministic and symmetric. A constant map has no top k and gives NaN.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sanitas.errors import ConfigError
from sanitas.similarity.base import Similarity, nan_where, work_dtype
from sanitas.similarity.preprocess import REDUCTIONS, check_choice, prepare_maps
from sanitas.similarity.registry import register_similarity

__all__ = ["TopKIntersection", "topk_count"]


def topk_count(k: float | int, m: int) -> int:
    """The number of positions ``k`` stands for among ``m``."""
    if isinstance(k, float):
        return max(1, min(m, int(round(k * m))))
    return min(int(k), m)


def _top_mask(u: torch.Tensor, count: int) -> torch.Tensor:
    order = torch.sort(u, dim=1, descending=True, stable=True).indices[:, :count]
    return torch.zeros_like(u, dtype=torch.bool).scatter_(1, order, True)


@register_similarity
class TopKIntersection(Similarity):
    """Fraction of shared top-k positions by |value| (k a fraction of the positions, default 0.1)."""

    name = "topk_intersection"
    description = "Fraction of the top-k positions by |value| that the two maps share"
    value_range = (0.0, 1.0)

    def __init__(self, *, k: float | int = 0.1, reduce: str = "none"):
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise ConfigError(f"k must be a fraction in (0, 1] or a count >= 1; got {k!r}")
        if isinstance(k, float) and not (0.0 < k <= 1.0 and math.isfinite(k)):
            raise ConfigError(f"k as a fraction must lie in (0, 1] (e.g. 0.1 for the top 10%); got {k!r}")
        if isinstance(k, int) and k < 1:
            raise ConfigError(f"k as a count must be at least 1; got {k!r}")
        reduce = check_choice("reduce", reduce, REDUCTIONS)
        super().__init__(k=k, reduce=reduce)
        self.k, self.reduce = k, reduce

    def _score(self, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None, baseline: Any) -> torch.Tensor:
        if self.reduce == "none":
            u, v = a.abs().flatten(1), b.abs().flatten(1)
        else:
            u = prepare_maps(a, absolute=True, reduce=self.reduce, rescale="none")[0].flatten(1)
            v = prepare_maps(b, absolute=True, reduce=self.reduce, rescale="none")[0].flatten(1)
        count = topk_count(self.k, u.shape[1])
        shared = (_top_mask(u, count) & _top_mask(v, count)).sum(dim=1).to(work_dtype(a.device)) / count
        constant = (u.amax(dim=1) == u.amin(dim=1)) | (v.amax(dim=1) == v.amin(dim=1))
        return nan_where(constant, shared)
