"""A user's own data: an ``.npz`` file with arrays ``x`` and ``y``, or a folder of images.

``x`` may be ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C in {1, 3, 4} (alpha is
dropped); uint8 values are divided by 255, float values must already lie in [0, 1].
A folder is read like torchvision's ``ImageFolder``: one sub-folder per class; a folder
with images but no sub-folders gives a single class named after the folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sanitas.data.dataset import Dataset
from sanitas.errors import DataFormatError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}


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


def load_npz(path: str | Path, split: str = "test") -> Dataset:
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
    classes = names or [str(i) for i in range(k)]
    return Dataset(name=path.stem, split=split, x=torch.from_numpy(x), y=torch.from_numpy(y.astype(np.int64)),
                   classes=tuple(classes), source=str(path.resolve()))


def _read_image(path: Path) -> np.ndarray:
    from skimage import io

    try:
        img = io.imread(path)
    except Exception as exc:
        raise DataFormatError(f"{path}: cannot read image ({exc})") from exc
    return np.asarray(img)


def load_folder(path: str | Path, split: str = "test", size: int | None = None) -> Dataset:
    from skimage.transform import resize

    root = Path(path)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs:
        groups = [(d.name, sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)) for d in subdirs]
        groups = [(n, fs) for n, fs in groups if fs]
    else:
        groups = [(root.name, sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))]
    if not any(fs for _, fs in groups):
        raise DataFormatError(f"{root}: no images found (looked for {sorted(IMAGE_SUFFIXES)}), "
                              "either directly or in one sub-folder per class")
    imgs, labels = [], []
    for label, (_, files) in enumerate(groups):
        for f in files:
            img = _read_image(f).astype(np.float64)
            if img.dtype != bool and img.max() > 1:
                img = img / (65535.0 if img.max() > 255 else 255.0)
            if img.ndim == 3:
                img = img[..., :3]
            imgs.append(img)
            labels.append(label)
    color = any(i.ndim == 3 and i.shape[2] == 3 for i in imgs)
    target = (size, size) if size else imgs[0].shape[:2]
    out = []
    for img in imgs:
        if color and img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        elif not color and img.ndim == 3:
            img = img[..., 0]
        if img.shape[:2] != tuple(target):
            img = resize(img, target, anti_aliasing=True)
        out.append(np.clip(img, 0, 1))
    x = np.stack(out).astype(np.float32)
    x = x.transpose(0, 3, 1, 2) if color else x[:, None]
    return Dataset(name=root.name, split=split, x=torch.from_numpy(np.ascontiguousarray(x)),
                   y=torch.tensor(labels, dtype=torch.int64), classes=tuple(n for n, _ in groups),
                   source=str(root.resolve()))
