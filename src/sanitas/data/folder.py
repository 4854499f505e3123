"""Image folders: the layouts a user's images come in, and which folder is which class.

Three layouts are read (like torchvision's ``ImageFolder``, images may lie deeper inside a class folder):

* ``root/train/<class>/...`` and ``root/test/<class>/...`` (``val``, ``valid`` or ``validation`` stand in
  for ``test``): one split per folder;
* ``root/<class>/...``: one folder per class; both splits hold every image;
* ``root/*.png``: images without class folders: one class named after ``root``.

Class ``i`` is the ``i``-th class folder name in sorted order, over every split folder (a class missing from
``test/`` keeps its index); ``classes=[...]`` gives the order instead, and then every class folder must be in
it. :func:`describe_folder` says which folder maps to which index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sanitas.data.dataset import Dataset
from sanitas.errors import DataFormatError, DatasetNotFoundError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}
SPLIT_FOLDERS = {"train": ("train", "training"), "test": ("test", "testing", "val", "valid", "validation")}


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class FolderLayout:
    """Where each split's images are and the class of each: ``splits`` maps a split to its folder (the same
    folder for both splits when there are no split folders), ``classes`` is the class order."""

    root: Path
    layout: str                      # "splits", "classes" or "flat"
    splits: dict[str, Path | None]
    classes: tuple[str, ...]
    order: str                       # how the class order was decided, in words

    def files(self, split: str) -> list[tuple[int, Path]]:
        """``(class index, image path)`` of every image of ``split``."""
        folder = self.folder(split)
        if self.layout == "flat":
            return [(0, f) for f in _images(folder) if f.parent == folder]
        out = []
        for d in _subfolders(folder):
            if d.name in self.classes:
                out += [(self.classes.index(d.name), f) for f in _images(d)]
        return out

    def folder(self, split: str) -> Path:
        if split not in SPLIT_FOLDERS:
            raise DataFormatError(f"unknown split {split!r}; use 'train' or 'test'")
        folder = self.splits.get(split)
        if folder is None:
            other = next(f for f in self.splits.values() if f is not None)
            names = "/ or ".join(SPLIT_FOLDERS[split])
            raise DatasetNotFoundError(f"{self.root} has {other.name}/ but no {names}/ folder for the {split!r} split; "
                                       f"add one, or give the folder itself ({other}) to use its images for both")
        return folder


def folder_layout(root: str | Path, classes=None) -> FolderLayout:
    """Read how ``root`` is laid out (see the module docs); ``classes`` fixes the class order."""
    root = Path(root).expanduser()
    subdirs = _subfolders(root)
    by_name = {d.name.lower(): d for d in subdirs}
    splits = {split: next((by_name[n] for n in names if n in by_name), None) for split, names in SPLIT_FOLDERS.items()}
    if any(splits.values()):
        layout = "splits"
        found = sorted({d.name for f in splits.values() if f is not None for d in _subfolders(f) if _images(d)})
    elif subdirs:
        layout, splits = "classes", {"train": root, "test": root}
        found = [d.name for d in subdirs if _images(d)]
    else:
        layout, splits = "flat", {"train": root, "test": root}
        found = [root.name] if any(f.parent == root for f in _images(root)) else []
    if not found:
        raise DataFormatError(f"{root}: no images found (looked for {sorted(IMAGE_SUFFIXES)}) in train/ and test/ "
                              "folders with one sub-folder per class, in one sub-folder per class, or directly")
    if classes is None:
        return FolderLayout(root, layout, splits, tuple(found), "class folder names in sorted order")
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise DataFormatError(f"classes= names a class twice: {names}")
    if layout == "flat":
        if names != found:
            raise DataFormatError(f"{root} holds images without class folders (one class, {root.name!r}); "
                                  f"classes= cannot order them: {names}")
    unlisted = [n for n in found if n not in names]
    if unlisted:
        raise DataFormatError(f"{root}: class folder(s) {unlisted} are not in classes={names}; list every class "
                              "(in the order of the model's outputs), or remove those folders")
    absent = [n for n in names if n not in found]
    if absent:
        raise DataFormatError(f"{root}: classes= names {absent}, and no folder of that name holds images; the class "
                              f"folders are {found}")
    return FolderLayout(root, layout, splits, tuple(names), "classes= as given")


def describe_folder(layout: FolderLayout) -> str:
    """Which folder is which class index, and where each split comes from, in words."""
    if layout.layout == "splits":
        where = ", ".join(f"{s}: {f.name}/" if f is not None else f"{s}: none" for s, f in layout.splits.items())
    elif layout.layout == "classes":
        where = "no train/ and test/ folders: both splits hold every image"
    else:
        where = "images without class folders: one class; both splits hold every image"
    mapping = ", ".join(f"{i} {name}" for i, name in enumerate(layout.classes))
    return f"classes {mapping} ({layout.order}); {where}"


def _read_image(path: Path) -> np.ndarray:
    from skimage import io

    try:
        img = io.imread(path)
    except Exception as exc:
        raise DataFormatError(f"{path}: cannot read image ({exc})") from exc
    img = np.asarray(img).astype(np.float64)
    if img.max() > 1:
        img = img / (65535.0 if img.max() > 255 else 255.0)
    return img[..., :3] if img.ndim == 3 else img


def load_folder(path: str | Path, split: str = "test", size: int | None = None, classes=None,
                limit: int | None = None) -> Dataset:
    """The images of ``split`` in folder ``path`` (see the module docs), as float32 ``(N, C, H, W)`` in [0, 1].

    Images are resized to ``size`` x ``size``, or to the size of the first image of the training split, so that
    both splits have one shape; the images are RGB when any of them is in colour, grey otherwise. ``limit``
    reads only the first ``limit`` images (in class order).
    """
    from skimage.transform import resize

    layout = folder_layout(path, classes)
    files = layout.files(split)[:limit]
    if not files:
        raise DataFormatError(f"{layout.folder(split)}: no images in the class folders of the {split!r} split")
    images = [_read_image(f) for _, f in files]
    first = layout.files("train")[0][1] if layout.splits.get("train") is not None else files[0][1]
    reference = images[0] if first == files[0][1] else _read_image(first)
    color = reference.ndim == 3 or any(i.ndim == 3 for i in images)
    target = (size, size) if size else reference.shape[:2]
    out = []
    for img in images:
        if color and img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        elif not color and img.ndim == 3:
            img = img[..., 0]
        if img.shape[:2] != tuple(target):
            img = resize(img, target, anti_aliasing=True)
        out.append(np.clip(img, 0, 1))
    x = np.stack(out).astype(np.float32)
    x = x.transpose(0, 3, 1, 2) if color else x[:, None]
    return Dataset(name=layout.root.name, split=split, x=torch.from_numpy(np.ascontiguousarray(x)),
                   y=torch.tensor([c for c, _ in files], dtype=torch.int64), classes=layout.classes,
                   source=str(layout.folder(split).resolve()),
                   info={"class_order": layout.order, "layout": describe_folder(layout)})
