"""Datasets that ship with scikit-learn and scikit-image (always available offline)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from sanitas.data.dataset import Dataset
from sanitas.errors import ConfigError

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _split(x: np.ndarray, y: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: ``TEST_FRACTION`` of each class goes to 'test'."""
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r}; use 'train' or 'test'")
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test[idx[: int(round(len(idx) * TEST_FRACTION))]] = True
    keep = test if split == "test" else ~test
    return x[keep], y[keep]


def _make(name, split, x, y, classes, source) -> Dataset:
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    return Dataset(name=name, split=split, x=xt, y=yt, classes=tuple(classes), source=source)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, read from the file it ships (what ``sklearn.datasets.load_digits`` reads) without
    importing scikit-learn, whose import takes longer than the rest of a ``sanitas layers`` command."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():  # another layout: ask scikit-learn itself
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images / 16.0)[:, None], d.target
    data = np.loadtxt(path, delimiter=",")
    return (data[:, :-1].reshape(-1, 8, 8) / 16.0)[:, None], data[:, -1].astype(int)


def load_digits(split: str = "train") -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), split 80/20."""
    x, y = _split(*_digits(), split)
    return _make("digits", split, x, y, [str(i) for i in range(10)], "sklearn.datasets.load_digits")


@functools.lru_cache(maxsize=1)
def _lfw() -> tuple[np.ndarray, np.ndarray]:
    from skimage.data import lfw_subset

    imgs = lfw_subset()  # 200 x 25 x 25 in [0, 1]: the first 100 are faces, the rest are not
    labels = np.r_[np.ones(100, dtype=np.int64), np.zeros(100, dtype=np.int64)]
    return np.clip(imgs, 0, 1)[:, None], labels


def load_lfw_faces(split: str = "train") -> Dataset:
    """scikit-image's ``lfw_subset``: 200 25x25 patches, face (1) vs non-face (0), split 80/20."""
    x, y = _split(*_lfw(), split)
    return _make("lfw-faces", split, x, y, ["non-face", "face"], "skimage.data.lfw_subset")


SAMPLE_IMAGES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon",
                 "immunohistochemistry", "hubble_deep_field", "clock", "brick", "grass", "gravel")


@functools.lru_cache(maxsize=4)
def _samples(size: int) -> tuple[np.ndarray, list[str]]:
    import skimage.data
    from skimage.transform import resize

    out, names = [], []
    for name in SAMPLE_IMAGES:
        try:
            img = getattr(skimage.data, name)()
        except Exception:  # an image that needs a download that is not possible here
            continue
        img = np.asarray(img, dtype=np.float64)
        if img.max() > 1:
            img = img / 255.0
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3]
        h, w = img.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        img = resize(img[top:top + s, left:left + s], (size, size), anti_aliasing=True)
        out.append(np.clip(img, 0, 1).transpose(2, 0, 1))
        names.append(name)
    return np.stack(out), names


def load_sample_images(split: str = "test", size: int = 64) -> Dataset:
    """scikit-image's natural photographs, centre-cropped, RGB, ``size`` x ``size``.

    For visual checks only: each photo is its own class and both splits hold all of them.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r}; use 'train' or 'test'")
    x, names = _samples(int(size))
    return _make("sample-images", split, x, np.arange(len(names)), names, "skimage.data")
