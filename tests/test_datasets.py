import numpy as np
import pytest
import torch

from sanitas.data import DATASETS, idx_datasets, list_datasets, load_dataset
from sanitas.data.idx import write_idx
from sanitas.errors import DatasetNotFoundError, DataFormatError, UnknownNameError

from test_download import _fake_mnist


@pytest.fixture
def no_system_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SANITAS_SYSTEM_DATA", str(tmp_path / "system"))
    monkeypatch.setenv("SANITAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SANITAS_DATA", raising=False)
    return tmp_path


def test_search_order(no_system_data, monkeypatch):
    tmp = no_system_data
    _fake_mnist(tmp / "cache" / "fashion-mnist", n_test=3)
    assert idx_datasets.locate("fashion-mnist") == tmp / "cache" / "fashion-mnist"
    _fake_mnist(tmp / "system" / "fashion-mnist", n_test=4, gz=False)
    assert idx_datasets.locate("fashion-mnist") == tmp / "system" / "fashion-mnist"
    assert len(load_dataset("fashion-mnist", "test")) == 4  # raw (non-gz) files work too
    _fake_mnist(tmp / "mine" / "fashion-mnist", n_test=5)
    monkeypatch.setenv("SANITAS_DATA", str(tmp / "mine"))
    assert idx_datasets.locate("fashion-mnist") == tmp / "mine" / "fashion-mnist"
    assert len(load_dataset("fashion-mnist", "test")) == 5


def test_incomplete_directory_is_skipped(no_system_data):
    tmp = no_system_data
    _fake_mnist(tmp / "system" / "mnist")
    (tmp / "system" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert idx_datasets.locate("mnist") is None


def test_not_found_says_where_it_looked(no_system_data):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", "train")
    msg = str(err.value)
    assert str(no_system_data / "system" / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_mismatched_image_and_label_counts(no_system_data):
    d = no_system_data / "system" / "mnist"
    _fake_mnist(d)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataFormatError, match="labels"):
        load_dataset("mnist", "test")


def test_real_fashion_mnist(fmnist_test):
    assert fmnist_test.x.shape == (10000, 1, 28, 28)
    assert fmnist_test.x.dtype == torch.float32
    assert 0 <= fmnist_test.x.min() and fmnist_test.x.max() <= 1
    assert torch.bincount(fmnist_test.y).tolist() == [1000] * 10
    assert fmnist_test.classes[9] == "Ankle boot"


@pytest.mark.parametrize("name,shape,k", [("digits", (1, 8, 8), 10), ("lfw-faces", (1, 25, 25), 2),
                                          ("sample-images", (3, 64, 64), None)])
def test_builtin_datasets(name, shape, k):
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert train.input_shape == shape
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert 0 <= float(train.x.min()) and float(train.x.max()) <= 1
    if k is not None:
        assert train.num_classes == k
        assert len(train) + len(test) == {"digits": 1797, "lfw-faces": 200}[name]
        # the split is deterministic
        assert torch.equal(load_dataset(name, "test").y, test.y)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        load_dataset("fasion-mnist")
    assert "fashion-mnist" in str(err.value) and "digits" in str(err.value)


def test_user_npz_channel_last_uint8(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 10, 12, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    ds = load_dataset(str(tmp_path / "mine.npz"))
    assert ds.x.shape == (6, 3, 10, 12)
    np.testing.assert_allclose(ds.x.numpy(), x.transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    assert ds.num_classes == 3


def test_user_npz_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(DataFormatError, match="'x' and 'y'"):
        load_dataset(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "range.npz", x=np.full((2, 4, 4), 255.0), y=np.zeros(2, dtype=int))
    with pytest.raises(DataFormatError, match=r"\[0, 1\]"):
        load_dataset(str(tmp_path / "range.npz"))
    with pytest.raises(DatasetNotFoundError):
        load_dataset(str(tmp_path / "missing.npz"))


def test_user_image_folder(tmp_path):
    from skimage import io

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            io.imsave(tmp_path / "imgs" / cls / f"{i}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8),
                      check_contrast=False)
    ds = load_dataset(str(tmp_path / "imgs"))
    assert ds.x.shape == (6, 1, 16, 16)
    assert ds.classes == ("cats", "dogs")
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 1]


def test_list_datasets_reports_locations(no_system_data):
    _fake_mnist(no_system_data / "system" / "fashion-mnist")
    status = {s.name: s for s in list_datasets()}
    assert set(status) == set(DATASETS.names())
    assert status["fashion-mnist"].available
    assert status["fashion-mnist"].location == str(no_system_data / "system" / "fashion-mnist")
    assert not status["mnist"].available
    assert status["digits"].available


def test_subsets_are_seeded():
    ds = load_dataset("digits", "train")
    a, b = ds.sample(50, seed=3), ds.sample(50, seed=3)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, ds.sample(50, seed=4).x)
    assert len(ds.take(7)) == 7
