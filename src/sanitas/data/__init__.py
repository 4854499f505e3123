"""Datasets: every loader returns a :class:`Dataset` of float32 ``(N, C, H, W)`` images in [0, 1].

>>> from sanitas.data import load_dataset
>>> ds = load_dataset("digits", split="test")
>>> ds.x.shape[1:]
torch.Size([1, 8, 8])

Names: ``fashion-mnist``, ``mnist``, ``digits``, ``lfw-faces``, ``sample-images``; a path to an
``.npz`` file or to a folder of images loads the user's own data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sanitas.data import builtin, idx_datasets
from sanitas.data.dataset import Dataset
from sanitas.data.idx import read_idx, write_idx
from sanitas.errors import DatasetNotFoundError
from sanitas.registry import Registry

__all__ = ["Dataset", "load_dataset", "list_datasets", "DATASETS", "read_idx", "write_idx", "DatasetStatus"]

DATASETS: Registry = Registry("dataset")
DATASETS.register("fashion-mnist", lambda split="train", **kw: idx_datasets.load_idx_dataset("fashion-mnist", split, **kw),
                  aliases=("fmnist", "fashion_mnist"))
DATASETS.register("mnist", lambda split="train", **kw: idx_datasets.load_idx_dataset("mnist", split, **kw))
DATASETS.register("digits", lambda split="train", **kw: builtin.load_digits(split))
DATASETS.register("lfw-faces", lambda split="train", **kw: builtin.load_lfw_faces(split), aliases=("lfw",))
DATASETS.register("sample-images", lambda split="test", size=64, **kw: builtin.load_sample_images(split, size))

DESCRIPTIONS = {
    "fashion-mnist": "Zalando's Fashion-MNIST: 70k 28x28 grey clothing images, 10 classes (IDX files)",
    "mnist": "MNIST handwritten digits: 70k 28x28 grey images, 10 classes (IDX files)",
    "digits": "scikit-learn's 8x8 digits: 1797 grey images, 10 classes, split 80/20",
    "lfw-faces": "scikit-image's lfw_subset: 200 25x25 grey patches, face vs non-face, split 80/20",
    "sample-images": "scikit-image's natural photos, RGB 64x64, one class each (visual checks)",
}


def load_dataset(name: str | Path, split: str = "train", *, limit: int | None = None, **kwargs) -> Dataset:
    """Load a dataset by registry name, or a user's ``.npz`` file or image folder by path.

    ``limit`` keeps the first ``limit`` examples.
    """
    from sanitas.data import user
    from sanitas.errors import UnknownNameError

    sname = str(name)
    if not isinstance(name, Path) and sname in DATASETS:
        ds = DATASETS.get(sname)(split=split, **kwargs)
    else:
        path = Path(sname).expanduser()
        if path.is_file():
            ds = user.load_npz(path, split)
        elif path.is_dir():
            ds = user.load_folder(path, split, kwargs.get("size"))
        elif isinstance(name, Path) or "/" in sname or sname.endswith(".npz"):
            raise DatasetNotFoundError(f"no file or folder at {path}; pass a dataset name "
                                       f"({', '.join(DATASETS.names())}) or an existing .npz file / image folder")
        else:
            try:
                DATASETS.get(sname)
            except UnknownNameError as exc:
                raise UnknownNameError(f"{exc} A path to an .npz file or an image folder also works.") from None
    return ds.take(limit)


@dataclass(frozen=True)
class DatasetStatus:
    name: str
    available: bool
    location: str
    description: str


def list_datasets() -> list[DatasetStatus]:
    """What is available here, and where it was found."""
    out = []
    for name in DATASETS.names():
        if name in idx_datasets.SPECS:
            where = idx_datasets.locate(name)
            if where is not None:
                out.append(DatasetStatus(name, True, str(where), DESCRIPTIONS[name]))
            else:
                how = "downloadable on first use" if not idx_datasets.offline() else "offline"
                out.append(DatasetStatus(name, False, f"not found ({how}); {idx_datasets.SPECS[name].how_to_get}",
                                         DESCRIPTIONS[name]))
        else:
            src = {"digits": "scikit-learn (bundled)", "lfw-faces": "scikit-image (bundled)",
                   "sample-images": "scikit-image (bundled)"}[name]
            out.append(DatasetStatus(name, True, src, DESCRIPTIONS[name]))
    return out
