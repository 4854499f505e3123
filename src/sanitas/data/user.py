"""A user's own data: an ``.npz`` file with arrays ``x`` and ``y`` (and optionally ``classes``), or a folder
of images (:mod:`sanitas.data.folder`).

``x`` may be ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in {1, 3, 4} (alpha is
dropped); uint8 values are divided by 255, float values must already lie in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sanitas.data.dataset import Dataset
from sanitas.errors import DataFormatError


def to_nchw(x: np.ndarray, source: str) -> np.ndarray:
    """Convert an image array to float32 NCHW in [0, 1], or raise a clear error."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        channel_last = x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)
        if channel_last:
            x = x.transpose(0, 3, 1, 2)
        if x.shape[1] == 4:
            x = x[:, :3]
        if x.shape[1] not in (1, 3):
            raise DataFormatError(f"{source}: cannot tell the channel axis of images shaped {x.shape}; "
                                  "save them as (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1, 3")
    else:
        raise DataFormatError(f"{source}: images must have 3 or 4 dimensions, got shape {x.shape}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif x.dtype == bool:
        x = x.astype(np.float32)
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataFormatError(f"{source}: images contain NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise DataFormatError(f"{source}: float images must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]; "
                                  "rescale them (e.g. x / 255) before saving")
    else:
        raise DataFormatError(f"{source}: unsupported image dtype {x.dtype}; use uint8 or float in [0, 1]")
    return np.ascontiguousarray(x)


def load_npz(path: str | Path, split: str = "test", classes=None) -> Dataset:
    """An ``.npz`` dataset; both splits hold every example. ``classes`` names the labels 0, 1, ... (it
    replaces a ``classes`` array stored in the file)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataFormatError(f"{path}: an .npz dataset needs arrays named 'x' and 'y', found {sorted(f.files)}")
            x, y = f["x"], f["y"]
            names = [str(c) for c in f["classes"]] if "classes" in f else None
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{path}: not a readable .npz file ({exc})") from exc
    x = to_nchw(x, str(path))
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataFormatError(f"{path}: 'y' must be a 1-d integer array, got {y.dtype} shaped {y.shape}")
    if len(y) != len(x):
        raise DataFormatError(f"{path}: {len(x)} images but {len(y)} labels")
    if len(y) and y.min() < 0:
        raise DataFormatError(f"{path}: labels must be non-negative")
    k = int(y.max()) + 1 if len(y) else 0
    if classes is not None:
        names = [str(c) for c in classes]
        if len(names) < k:
            raise DataFormatError(f"{path}: classes= names {len(names)} classes, and the labels go up to {k - 1}; "
                                  f"name every class 0..{k - 1}")
    names = names or [str(i) for i in range(k)]
    order = "classes= as given" if classes is not None else "the labels' numbers"
    return Dataset(name=path.stem, split=split, x=torch.from_numpy(x), y=torch.from_numpy(y.astype(np.int64)),
                   classes=tuple(names), source=str(path.resolve()),
                   info={"class_order": order, "splits": "one file: both splits hold every example"})
