"""Datasets: every loader returns a :class:`Dataset` of float32 ``(N, C, H, W)`` images in [0, 1].

>>> from sanitas.data import load_dataset
>>> ds = load_dataset("digits", split="test")
>>> ds.x.shape[1:]
torch.Size([1, 8, 8])

Names: ``fashion-mnist``, ``mnist``, ``digits``, ``lfw-faces``, ``sample-images``; a path to an
``.npz`` file or to a folder of images loads the user's own data (folder layouts: :mod:`sanitas.data.folder`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sanitas.data import builtin, idx_datasets
from sanitas.data.dataset import Dataset
from sanitas.data.idx import read_idx, write_idx
from sanitas.errors import DataFormatError, DatasetNotFoundError
from sanitas.registry import Registry

__all__ = ["Dataset", "load_dataset", "list_datasets", "DATASETS", "read_idx", "write_idx", "DatasetStatus",
           "dataset_spec", "dataset_label"]

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


def load_dataset(name: str | Path | Mapping, split: str = "train", *, limit: int | None = None, classes=None,
                 **kwargs) -> Dataset:
    """Load a dataset by registry name, or a user's ``.npz`` file or image folder by path (or a mapping
    ``{path: ..., classes: [...], size: N}``, see :func:`dataset_spec`).

    ``limit`` keeps the first ``limit`` examples. Folders: ``train/`` and ``test/`` with one folder per class,
    one folder per class, or images alone (:mod:`sanitas.data.folder`); ``size=N`` resizes their images to N x N.
    ``classes`` gives the class order of a folder (class ``i`` is ``classes[i]``; default: the class folders'
    names sorted) or names the labels of an ``.npz`` file; ``dataset.info`` says which folder is which class.
    """
    from sanitas.data import user
    from sanitas.errors import UnknownNameError

    if isinstance(name, Mapping):
        name, options = dataset_spec(name)
        listed = options.pop("classes", None)
        if classes is not None and listed is not None and [str(c) for c in classes] != listed:
            raise DataFormatError(f"classes= {list(classes)} and the dataset spec's classes {listed} differ")
        classes = classes if classes is not None else listed
        kwargs = {**options, **kwargs}
    sname = str(name)
    if not isinstance(name, Path) and sname in DATASETS:
        ds = DATASETS.get(sname)(split=split, **kwargs)
        if classes is not None and [str(c) for c in classes] != list(ds.classes):
            raise DataFormatError(f"{DATASETS.canonical(sname)} has its own class order {list(ds.classes)}; "
                                  "classes= orders the classes of your own folders and .npz files")
    else:
        path = Path(sname).expanduser()
        if path.is_file():
            ds = user.load_npz(path, split, classes)
        elif path.is_dir():
            from sanitas.data.folder import load_folder

            ds = load_folder(path, split, kwargs.get("size"), classes, limit)
        elif isinstance(name, Path) or "/" in sname or sname.endswith(".npz"):
            raise DatasetNotFoundError(f"no file or folder at {path}; pass a dataset name "
                                       f"({', '.join(DATASETS.names())}) or an existing .npz file / image folder")
        else:
            try:
                DATASETS.get(sname)
            except UnknownNameError as exc:
                raise UnknownNameError(f"{exc} A path to an .npz file or an image folder also works.") from None
    return ds.take(limit)


DATASET_KEYS = ("path", "name", "classes", "size")


def dataset_spec(value) -> tuple[str, dict]:
    """A dataset given as a mapping (configs, and the command line's ``--classes``) -> ``(name or path,
    options)``: ``{path: photos/, classes: [cat, dog], size: 64}`` or ``{name: digits}``."""
    unknown = sorted(set(map(str, value)) - set(DATASET_KEYS))
    if unknown:
        raise DataFormatError(f"dataset: unknown key(s) {unknown}; a dataset mapping takes path (or name), classes "
                              "and size")
    where = [k for k in ("path", "name") if k in value]
    if len(where) != 1 or not isinstance(value[where[0]], str) or not value[where[0]].strip():
        raise DataFormatError(f"dataset {dict(value)!r}: give one of path: (a folder or .npz file) or name: (a "
                              "registered dataset)")
    options = {}
    if value.get("classes") is not None:
        classes = value["classes"]
        if isinstance(classes, str) or not isinstance(classes, (list, tuple)) or not classes:
            raise DataFormatError(f"dataset: classes must be a list of class names, got {classes!r}")
        options["classes"] = [str(c) for c in classes]
    if value.get("size") is not None:
        from sanitas.utils import validation

        options["size"] = validation.count(value["size"], "dataset size")
    return value[where[0]], options


def dataset_label(value) -> str:
    """A dataset spec in a few words: its name or path (and the class order, when given)."""
    if isinstance(value, Mapping):
        name, options = dataset_spec(value)
        extra = f", classes {options['classes']}" if "classes" in options else ""
        return f"{name}{extra}"
    return str(value)


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
