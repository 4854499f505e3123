"""The contract every similarity metric follows, and the input checks they share.

A metric is a small callable object::

    metric(a, b, x=None, baseline=None) -> Tensor[N]

``a`` and ``b`` are batched maps shaped ``(N, C, H, W)`` (or ``(N, H, W)``, read as one channel),
``x`` the input images ``(N, C', H, W)`` for metrics that need them (``spearman_nz``), and
``baseline`` the reference input of that metric (ignored by the others). The result holds one
score per image, float64 (float32 on devices without float64), on ``a``'s device.

Conventions shared by all metrics:

* Maps are checked before anything is computed: same shape, real numbers, no NaN or infinity
  (a NaN map is a bug in the explainer, not an unscorable image). Violations raise
  :class:`~sanitas.errors.InputError` saying which images are affected.
* An image that cannot be scored, typically a constant map (no ranks, no variance), gets NaN, never
  an exception and never a warning. :meth:`Similarity.summarize` leaves NaN out of the mean and
  reports how many there were.
* Options are keyword arguments of the metric's constructor and are recorded in ``.options``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from sanitas.errors import InputError
from sanitas.utils import stats

__all__ = ["Similarity", "as_maps", "check_pair", "work_dtype"]


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 for the arithmetic, except on Apple's MPS which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def as_maps(t: Any, what: str, *, device: torch.device | None = None) -> torch.Tensor:
    """A batch of maps or images as a 4-D real tensor ``(N, C, H, W)``; 3-D input gains C=1."""
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(t if t.flags.writeable else t.copy())  # torch warns on read-only arrays
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor or numpy array shaped (N, C, H, W) or (N, H, W); "
                         f"got {type(t).__name__}")
    if t.is_complex():
        raise InputError(f"{what} is complex ({t.dtype}); similarity metrics need real-valued maps")
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise InputError(f"{what} must be shaped (N, C, H, W) or (N, H, W) (a batch, even of one image); "
                         f"got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        t = t.to(device)
    if not t.is_floating_point():
        t = t.to(work_dtype(t.device))
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).flatten(1).any(1).nonzero().flatten().tolist()
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise InputError(f"{what} contains NaN or infinite values (images {shown}); a map with NaN cannot be "
                         "scored. Check the explanation method (e.g. a division by zero) or the inputs.")
    return t


def check_pair(a: Any, b: Any, x: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate and align ``a``, ``b`` (same shape) and optionally ``x`` (same N, H, W)."""
    a = as_maps(a, "a (first map batch)")
    b = as_maps(b, "b (second map batch)", device=a.device)
    if a.shape != b.shape:
        raise InputError(f"a and b must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}. "
                         "Compare maps of the same images computed the same way.")
    if x is not None:
        x = as_maps(x, "x (input images)", device=a.device)
        if x.shape[0] != a.shape[0] or x.shape[-2:] != a.shape[-2:]:
            raise InputError(f"x must hold the N={a.shape[0]} input images the maps explain, with the maps' "
                             f"height and width {tuple(a.shape[-2:])}; got x of shape {tuple(x.shape)}")
    return a, b, x


class Similarity:
    """Base class of similarity metrics: validation, options, description and NaN-aware summary."""

    #: Registry name, e.g. ``"spearman_abs"``.
    name: ClassVar[str] = ""
    #: One line for listings and reports.
    description: ClassVar[str] = ""
    #: True when a larger score means "more alike" (true of every built-in metric).
    higher_is_more_similar: ClassVar[bool] = True
    #: True when ``metric(a, b) == metric(b, a)``.
    symmetric: ClassVar[bool] = True
    #: True when the metric needs the input images ``x``.
    needs_input: ClassVar[bool] = False
    #: True when the metric compares images (spatial structure: SSIM, HOG); rank and correlation
    #: metrics also score maps of non-image inputs (signals, tabular rows), flattened.
    needs_images: ClassVar[bool] = False
    #: The score's possible range, for axes and sanity checks.
    value_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)

    def __init__(self, **options: Any):
        self.options: dict[str, Any] = dict(options)

    # -- the contract -------------------------------------------------------------------------
    def __call__(self, a: Any, b: Any, x: Any = None, baseline: Any = None) -> torch.Tensor:
        a, b, x = check_pair(a, b, x)
        if self.needs_input and x is None:
            raise InputError(f"metric {self.name!r} needs the input images: call it as metric(a, b, x=images)")
        if a.shape[0] == 0:
            return torch.empty(0, dtype=work_dtype(a.device), device=a.device)
        return self._score(a, b, x, baseline)

    def _score(self, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None, baseline: Any) -> torch.Tensor:
        raise NotImplementedError

    # -- reporting ----------------------------------------------------------------------------
    def summarize(self, values: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
        """``dict(mean, ci_low, ci_high, n, nan_count)``: NaN scores are excluded from the mean and
        the bootstrap interval and counted in ``nan_count``; ``n`` counts the finite scores."""
        return stats.summarize(values, n_boot=n_boot, level=level, seed=seed)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})" if opts else f"{type(self).__name__}()"

    def _key(self) -> tuple:
        # repr, so that tensor-valued options (a baseline image) compare without ambiguity
        return type(self).__name__, tuple(sorted((k, repr(v)) for k, v in self.options.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Similarity) and type(self) is type(other) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def nan_where(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` with NaN where ``mask`` is true (no warnings, no in-place change)."""
    return torch.where(mask, torch.full_like(values, math.nan), values)
