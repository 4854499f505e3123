"""Batched average ranks, identical to ``scipy.stats.rankdata(method="average")`` row by row.

Ties get the mean of the ranks they span (1-based), e.g. ``[10, 20, 20, 30] -> [1, 2.5, 2.5, 4]``.
One sort per row, no Python loop, no N x N matrix: the start of every run of equal sorted values
is found with a cumulative max, its length with a scatter-add, and each element gets
``(start + end) / 2 + 1`` with ``end = start + length - 1``.

On the CPU the sort is numpy's ``argsort`` over the whole batch at once (about six times faster
than ``torch.sort`` for rows of a few hundred to a few thousand elements); elsewhere
``torch.sort``. Either way only the order matters, and ties are averaged, so both give the same
ranks.
"""

from __future__ import annotations

import math

import numpy as np
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
    s, order = _sort(v)
    pos = torch.arange(m, device=v.device).expand(s.shape)
    starts_run = torch.ones_like(s, dtype=torch.bool)
    starts_run[..., 1:] = s[..., 1:] != s[..., :-1]
    first = torch.where(starts_run, pos, torch.zeros_like(pos)).cummax(dim=-1).values
    length = torch.zeros_like(first).scatter_add_(-1, first, torch.ones_like(first)).gather(-1, first)
    sorted_ranks = (2 * first + length - 1).to(out_dtype) / 2 + 1
    ranks = torch.empty_like(sorted_ranks).scatter_(-1, order, sorted_ranks)
    if mask is not None:
        ranks = torch.where(mask, ranks, torch.full_like(ranks, math.nan))
    return ranks.movedim(-1, dim)


def _sort(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted values and the sorting permutation along the last dimension."""
    if v.device.type == "cpu" and not v.requires_grad and v.dtype in (torch.float32, torch.float64):
        order = torch.from_numpy(np.argsort(v.numpy(), axis=-1))
        return torch.take_along_dim(v, order, dim=-1), order
    return torch.sort(v, dim=-1)
