"""Spearman rank correlation between maps: ``spearman`` (signed), ``spearman_abs``, ``spearman_nz``.

Spearman's rho is the Pearson correlation of the average ranks (ties averaged exactly as
``scipy.stats.spearmanr``), over all ``C x H x W`` elements of each map, one value per image.
Both batches are ranked in one sort of their ``(2, N, M)`` stack; nothing of size ``N x N`` or
``2N x 2N`` is ever formed.

* ``spearman``: signed values (adebayo2018's "without absolute value"/diverging variant);
* ``spearman_abs``: ``|a|`` vs ``|b|`` (adebayo2018's main metric);
* ``spearman_nz`` (sundararajan2019): ``|a|`` vs ``|b|`` over only the positions
  where the input differs from the baseline. Integrated Gradients gives exactly zero where
  ``x == baseline`` (black pixels for a black baseline), and shared zeros alone push
  ``spearman_abs`` towards 1 whatever the model; ``spearman_nz`` leaves them out.
"""

from __future__ import annotations

from typing import Any

import torch

from sanitas.errors import ConfigError, InputError
from sanitas.similarity.base import Similarity, work_dtype
from sanitas.similarity.pearson import pearson_rows
from sanitas.similarity.ranks import average_ranks
from sanitas.similarity.registry import register_similarity

__all__ = ["Spearman", "SpearmanAbs", "SpearmanNZ", "spearman_rows", "input_mask"]


def spearman_rows(u: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Spearman correlation of each row of ``u`` with the same row of ``v`` (``(N, M)`` each).

    With ``mask`` only the selected elements of each row are ranked and correlated. NaN where a
    row is constant (over the selected elements) or has fewer than two selected elements.
    """
    ranks = average_ranks(torch.stack([u, v]), mask=None if mask is None else mask.unsqueeze(0))
    if mask is not None:
        ranks = torch.nan_to_num(ranks, nan=0.0)  # excluded positions are ignored via the mask
    return pearson_rows(ranks[0], ranks[1], mask)


def input_mask(x: torch.Tensor, baseline: Any = 0.0, atol: float = 0.0) -> torch.Tensor:
    """Bool ``(N, 1, H, W)``: pixels where any channel of ``x`` differs from ``baseline`` by more
    than ``atol``. ``baseline`` is a number or a tensor broadcastable to ``x`` (e.g. ``(C, H, W)``,
    ``(N, C, H, W)`` or ``(1, C, 1, 1)``)."""
    base = torch.as_tensor(baseline, device=x.device)
    if base.is_floating_point() or x.is_floating_point():
        base = base.to(x.dtype if x.is_floating_point() else work_dtype(x.device))
    if base.ndim == 3 and base.shape != x.shape[1:]:
        base = base.unsqueeze(1)  # an (N, H, W) baseline for (N, 1, H, W) inputs
    try:
        diff = (x - base).abs()
    except RuntimeError as exc:
        raise InputError(f"baseline of shape {tuple(base.shape)} does not broadcast to the inputs' shape "
                         f"{tuple(x.shape)}; pass a number or a tensor shaped like one input or the batch") from exc
    if diff.shape != x.shape:
        raise InputError(f"baseline of shape {tuple(base.shape)} does not broadcast to the inputs' shape "
                         f"{tuple(x.shape)}")
    if not bool(torch.isfinite(diff).all()):
        raise InputError("baseline contains NaN or infinite values")
    return (diff > atol).any(dim=1, keepdim=True)


def _check_bool(option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{option} must be True or False; got {value!r}")
    return value


@register_similarity
class Spearman(Similarity):
    """Spearman rank correlation of the signed maps over all elements (adebayo2018, diverging)."""

    name = "spearman"
    description = "Spearman rank correlation of the signed maps over all elements"
    _default_absolute = False

    def __init__(self, *, absolute: bool | None = None):
        absolute = self._default_absolute if absolute is None else _check_bool("absolute", absolute)
        super().__init__(absolute=absolute)
        self.absolute = absolute

    def _values(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, v = a.flatten(1), b.flatten(1)
        return (u.abs(), v.abs()) if self.absolute else (u, v)

    def _score(self, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None, baseline: Any) -> torch.Tensor:
        return spearman_rows(*self._values(a, b))


@register_similarity
class SpearmanAbs(Spearman):
    """Spearman rank correlation of |a| and |b| over all elements (adebayo2018's main metric)."""

    name = "spearman_abs"
    description = "Spearman rank correlation of |a| and |b| over all elements"
    _default_absolute = True


@register_similarity
class SpearmanNZ(Spearman):
    """Spearman rank correlation of |a| and |b| over the pixels where the input differs from the baseline."""

    name = "spearman_nz"
    description = "Spearman of |a| and |b| over pixels where the input differs from the baseline (sundararajan2019)"
    needs_input = True
    _default_absolute = True

    def __init__(self, *, absolute: bool | None = None, baseline: Any = 0.0, atol: float = 0.0):
        super().__init__(absolute=absolute)
        if not isinstance(atol, (int, float)) or isinstance(atol, bool) or atol < 0:
            raise ConfigError(f"atol must be a non-negative number; got {atol!r}")
        self.options.update(baseline=baseline, atol=float(atol))
        self.baseline = baseline
        self.atol = float(atol)

    def _score(self, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None, baseline: Any) -> torch.Tensor:
        assert x is not None  # checked by Similarity.__call__
        keep = input_mask(x, self.baseline if baseline is None else baseline, self.atol)
        keep = keep.expand(-1, a.shape[1], -1, -1).flatten(1)
        return spearman_rows(*self._values(a, b), mask=keep)
