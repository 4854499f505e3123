"""Image folders as users lay them out (issue 20): train/ and test/ with class folders, one folder per class,
images alone; which folder is which class index, and an explicit ``classes=`` order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sanitas.cli import main
from sanitas.data import load_dataset
from sanitas.errors import DataFormatError, DatasetNotFoundError


def _write(folder, n, value, size=6, color=False):
    from skimage import io

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((size, size, 3) if color else (size, size), value + i, dtype=np.uint8)
        io.imsave(folder / f"{i:02d}.png", img, check_contrast=False)


@pytest.fixture
def split_folder(tmp_path):
    """root/train/{cat,dog,emu}/ and root/test/{cat,dog}/ (no emu in test: its index must stay 2)."""
    root = tmp_path / "animals"
    for name, value in (("cat", 10), ("dog", 100), ("emu", 200)):
        _write(root / "train" / name, 3, value)
    _write(root / "test" / "dog", 2, 100)
    _write(root / "test" / "cat", 1, 10)
    return root


def test_train_and_test_folders_with_class_folders(split_folder):
    train, test = load_dataset(split_folder, "train"), load_dataset(split_folder, "test")
    assert train.classes == test.classes == ("cat", "dog", "emu")  # sorted union over both splits
    assert train.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert test.y.tolist() == [0, 1, 1]
    assert torch.allclose(test.x[0, 0, 0, 0] * 255, torch.tensor(10.0))  # the cat image is class 0
    assert "0 cat, 1 dog, 2 emu" in test.info["layout"] and "train: train/, test: test/" in test.info["layout"]
    assert test.source.endswith("animals/test")


def test_explicit_class_order(split_folder):
    test = load_dataset(split_folder, "test", classes=["emu", "dog", "cat"])
    assert test.classes == ("emu", "dog", "cat") and test.y.tolist() == [2, 1, 1]
    assert load_dataset({"path": str(split_folder), "classes": ["emu", "dog", "cat"]}, "test").y.tolist() == [2, 1, 1]
    with pytest.raises(DataFormatError, match=r"class folder\(s\) \['emu'\] are not in classes"):
        load_dataset(split_folder, "test", classes=["dog", "cat"])
    with pytest.raises(DataFormatError, match=r"classes= names \['bird'\], and no folder of that name"):
        load_dataset(split_folder, "test", classes=["cat", "dog", "emu", "bird"])
    with pytest.raises(DataFormatError, match="own class order"):
        load_dataset("digits", "test", classes=["a", "b"])


def test_val_stands_in_for_test_and_a_missing_split_is_named(tmp_path):
    root = tmp_path / "data"
    _write(root / "train" / "a", 2, 1)
    _write(root / "train" / "b", 2, 50)
    with pytest.raises(DatasetNotFoundError, match=r"has train/ but no test/ or testing/ or val/"):
        load_dataset(root, "test")
    _write(root / "val" / "b", 1, 50)
    assert load_dataset(root, "test").y.tolist() == [1]


def test_class_folders_and_loose_images(tmp_path):
    flat = tmp_path / "flat"
    _write(flat / "b", 2, 50)
    _write(flat / "a", 1, 1)
    ds = load_dataset(flat, "test")
    assert ds.classes == ("a", "b") and ds.y.tolist() == [0, 1, 1]
    assert "both splits hold every image" in ds.info["layout"]
    loose = tmp_path / "loose"
    _write(loose, 3, 5)
    ds = load_dataset(loose, "test")
    assert ds.classes == ("loose",) and len(ds) == 3


def test_nested_images_and_both_splits_share_one_shape(tmp_path):
    """Images deeper inside a class folder count (ImageFolder walks them); a test split of other sizes and
    colours is resized to the training split's first image, so one model takes both."""
    root = tmp_path / "mixed"
    _write(root / "train" / "a" / "batch1", 2, 3, size=8)
    _write(root / "train" / "b", 2, 90, size=8)
    _write(root / "test" / "a", 1, 3, size=12, color=True)
    train, test = load_dataset(root, "train"), load_dataset(root, "test")
    assert len(train) == 4 and train.y.tolist() == [0, 0, 1, 1]
    assert test.x.shape[-2:] == train.x.shape[-2:] == (8, 8)


def test_npz_class_names(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1, 1]))
    assert load_dataset(tmp_path / "d.npz", "test", classes=["no", "yes"]).classes == ("no", "yes")
    with pytest.raises(DataFormatError, match="name every class"):
        load_dataset(tmp_path / "d.npz", "test", classes=["no"])


def test_datasets_command_shows_the_class_order(split_folder):
    r = CliRunner().invoke(main, ["datasets", str(split_folder)])
    assert r.exit_code == 0, r.output
    assert "0 cat (3 images), 1 dog (3 images), 2 emu (3 images)" in r.output
    assert "test: animals/test: 3 images" in r.output
    assert "classes 0 cat, 1 dog, 2 emu (class folder names in sorted order)" in r.output
    r = CliRunner().invoke(main, ["datasets", str(split_folder), "--classes", "dog,cat,emu"])
    assert "0 dog (3 images), 1 cat (3 images)" in r.output and "classes= as given" in r.output
