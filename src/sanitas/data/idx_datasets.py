"""MNIST and Fashion-MNIST from IDX files: found on disk or downloaded with checksums.

Search order for ``<name>`` (first directory holding all four files wins):

1. ``$SANITAS_DATA/<name>/``
2. ``/usr/share/datasets/<name>/`` (Debian's ``dataset-fashion-mnist`` package; the root can
   be changed with ``$SANITAS_SYSTEM_DATA``)
3. ``~/.cache/sanitas/<name>/`` (``$SANITAS_CACHE/<name>/``), where downloads go.

Each file may be gzip-compressed (``.gz``) or raw. When nothing is found and downloads are
allowed (``$SANITAS_OFFLINE`` unset), the official files are downloaded into the cache and
checked against their published SHA-256.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sanitas.data.dataset import Dataset
from sanitas.data.download import download
from sanitas.data.idx import read_idx
from sanitas.errors import ChecksumError, ConfigError, DatasetNotFoundError, DataFormatError, DownloadError
from sanitas.utils.paths import cache_dir

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxSpec:
    name: str
    classes: tuple[str, ...]
    mirrors: tuple[str, ...]
    sha256: dict[str, str]  # file name (with .gz) -> sha256 of the official gz file
    how_to_get: str
    sizes: dict[str, int]  # split -> number of examples


FASHION_MNIST = IdxSpec(
    name="fashion-mnist",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    sha256={
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    how_to_get="on Debian/Ubuntu as root: `apt-get install dataset-fashion-mnist`; or put the four "
               "IDX files in $SANITAS_DATA/fashion-mnist/; or allow downloads (unset SANITAS_OFFLINE)",
    sizes={"train": 60000, "test": 10000},
)

MNIST = IdxSpec(
    name="mnist",
    classes=tuple(str(i) for i in range(10)),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    sha256={
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    how_to_get="put the four IDX files in $SANITAS_DATA/mnist/, or allow downloads (unset SANITAS_OFFLINE)",
    sizes={"train": 60000, "test": 10000},
)

SPECS = {s.name: s for s in (FASHION_MNIST, MNIST)}


def search_dirs(name: str) -> list[Path]:
    """Directories searched for ``name``, in order."""
    dirs = []
    if os.environ.get("SANITAS_DATA"):
        dirs.append(Path(os.environ["SANITAS_DATA"]).expanduser() / name)
    dirs.append(Path(os.environ.get("SANITAS_SYSTEM_DATA", "/usr/share/datasets")) / name)
    dirs.append(cache_dir() / name)
    return dirs


def _file_in(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _complete(directory: Path) -> bool:
    return all(_file_in(directory, stem) for pair in SPLIT_FILES.values() for stem in pair)


def locate(name: str) -> Path | None:
    """The first directory holding all four files of ``name``, or None."""
    for d in search_dirs(name):
        if _complete(d):
            return d
    return None


def offline() -> bool:
    return os.environ.get("SANITAS_OFFLINE", "") not in ("", "0")


def fetch(spec: IdxSpec, *, opener=None, quiet: bool | None = None) -> Path:
    """Download every file of ``spec`` into the cache, verifying SHA-256 checksums."""
    target = cache_dir() / spec.name
    for fname, digest in spec.sha256.items():
        download([m + fname for m in spec.mirrors], target / fname, digest, opener=opener, quiet=quiet)
    return target


@functools.lru_cache(maxsize=8)
def _load_arrays(images: str, labels: str, mtimes: tuple) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3:
        raise DataFormatError(f"{images}: expected a 3-d image array (N, H, W), got shape {x.shape}")
    if y.ndim != 1:
        raise DataFormatError(f"{labels}: expected a 1-d label array, got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataFormatError(f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels")
    return x, y


def load_idx_dataset(name: str, split: str = "train", *, download_ok: bool | None = None,
                     opener=None, quiet: bool | None = None) -> Dataset:
    spec = SPECS[name]
    if split not in SPLIT_FILES:
        raise ConfigError(f"unknown split {split!r} for {name}; use 'train' or 'test'")
    directory = locate(name)
    if directory is None:
        allowed = (not offline()) if download_ok is None else download_ok
        looked = ", ".join(str(d) for d in search_dirs(name))
        if not allowed:
            raise DatasetNotFoundError(f"dataset {name!r} not found; looked in: {looked}. To get it: {spec.how_to_get}")
        try:
            directory = fetch(spec, opener=opener, quiet=quiet)
        except (DownloadError, ChecksumError) as exc:
            raise DatasetNotFoundError(
                f"dataset {name!r} not found (looked in: {looked}) and the download failed: {exc}. "
                f"To get it: {spec.how_to_get}") from exc
    img_path = _file_in(directory, SPLIT_FILES[split][0])
    lab_path = _file_in(directory, SPLIT_FILES[split][1])
    assert img_path is not None and lab_path is not None
    mt = (img_path.stat().st_mtime_ns, lab_path.stat().st_mtime_ns)
    x, y = _load_arrays(str(img_path), str(lab_path), mt)
    if x.dtype != np.uint8:
        raise DataFormatError(f"{img_path}: expected unsigned-byte pixels, got {x.dtype}")
    if y.max(initial=0) >= len(spec.classes):
        raise DataFormatError(f"{lab_path}: label {int(y.max())} out of range for {len(spec.classes)} classes")
    xt = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    yt = torch.from_numpy(y.astype(np.int64))
    return Dataset(name=name, split=split, x=xt, y=yt, classes=spec.classes, source=str(directory))
