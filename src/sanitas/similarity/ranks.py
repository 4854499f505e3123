"""Batched average ranks, identical to ``scipy.stats.rankdata(method="average")`` row by row.

Ties get the mean of the ranks they span (1-based), e.g. ``[10, 20, 20, 30] -> [1, 2.5, 2.5, 4]``.
One sort per row, no Python loop, no N x N matrix: the start and the end of every run of equal
sorted values are found with a cumulative max / min, and each element gets
``(start + end) / 2 + 1``.
"""

from __future__ import annotations

import math

import torch

from sanitas.similarity.base import work_dtype

__all__ = ["average_ranks"]


def average_ranks(values: torch.Tensor, mask: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """Average (tie-aware) 1-based ranks of ``values`` along ``dim``.

    ``mask`` (bool, broadcastable to ``values``): rank only where true; the ranks of the selected
    elements run 1..m within each row and the other positions get NaN. Values must be finite
    (sanitas' metrics check this before ranking). Returns float64 (float32 on MPS).
    """
    v = values.movedim(dim, -1)
    if not v.is_floating_point():
        v = v.to(work_dtype(v.device))  # exact for integers up to 2**53
    if mask is not None:
        mask = torch.broadcast_to(mask, values.shape).movedim(dim, -1)
        # Excluded positions sort last (all selected values are finite), so the selected ones
        # keep ranks 1..m among themselves.
        v = torch.where(mask, v, torch.full_like(v, math.inf))
    m = v.shape[-1]
    out_dtype = work_dtype(v.device)
    if m == 0:
        return torch.empty(v.shape, dtype=out_dtype, device=v.device).movedim(-1, dim)
    s, order = torch.sort(v, dim=-1)
    pos = torch.arange(m, device=v.device).expand(s.shape)
    starts_run = torch.ones_like(s, dtype=torch.bool)
    starts_run[..., 1:] = s[..., 1:] != s[..., :-1]
    ends_run = torch.ones_like(starts_run)
    ends_run[..., :-1] = starts_run[..., 1:]
    first = torch.where(starts_run, pos, torch.zeros_like(pos)).cummax(dim=-1).values
    last = torch.where(ends_run, pos, torch.full_like(pos, m - 1)).flip(-1).cummin(dim=-1).values.flip(-1)
    sorted_ranks = (first + last).to(out_dtype) / 2 + 1
    ranks = torch.empty_like(sorted_ranks).scatter_(-1, order, sorted_ranks)
    if mask is not None:
        ranks = torch.where(mask, ranks, torch.full_like(ranks, math.nan))
    return ranks.movedim(-1, dim)
