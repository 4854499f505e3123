"""The download path, against a local HTTP server and a mocked opener (never the internet)."""

import hashlib
import http.server
import io
import threading
from functools import partial

import numpy as np
import pytest

from sanitas.data import idx_datasets, load_dataset
from sanitas.data.download import download
from sanitas.data.idx import write_idx
from sanitas.errors import ChecksumError, DatasetNotFoundError, DownloadError


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_verifies_checksum(http_root, tmp_path):
    root, url = http_root
    (root / "f.bin").write_bytes(b"hello sanitas")
    good = hashlib.sha256(b"hello sanitas").hexdigest()
    dest = download(url + "f.bin", tmp_path / "cache" / "f.bin", good, quiet=True)
    assert dest.read_bytes() == b"hello sanitas"


def test_checksum_mismatch_leaves_nothing(http_root, tmp_path):
    root, url = http_root
    (root / "f.bin").write_bytes(b"tampered")
    dest = tmp_path / "cache" / "f.bin"
    with pytest.raises(ChecksumError, match="SHA-256"):
        download(url + "f.bin", dest, "0" * 64, quiet=True, retries=0)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no partial file either


def test_falls_back_to_second_mirror(http_root, tmp_path):
    root, url = http_root
    (root / "f.bin").write_bytes(b"payload")
    digest = hashlib.sha256(b"payload").hexdigest()
    dest = download([url + "missing/f.bin", url + "f.bin"], tmp_path / "f.bin", digest, quiet=True, retries=0)
    assert dest.read_bytes() == b"payload"


def test_unreachable_raises_download_error(tmp_path):
    def opener(url, timeout):
        raise OSError("network unreachable")

    with pytest.raises(DownloadError, match="network unreachable"):
        download("http://example.invalid/f", tmp_path / "f", "0" * 64, opener=opener, retries=1, quiet=True)


def test_existing_good_file_is_not_refetched(tmp_path):
    dest = tmp_path / "f"
    dest.write_bytes(b"abc")
    calls = []

    def opener(url, timeout):
        calls.append(url)
        return io.BytesIO(b"abc")

    download("http://x/f", dest, hashlib.sha256(b"abc").hexdigest(), opener=opener, quiet=True)
    assert calls == []


def _fake_mnist(directory, n_train=20, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    files = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        files[f"{stem}-images-idx3-ubyte{ext}"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        files[f"{stem}-labels-idx1-ubyte{ext}"] = rng.integers(0, 10, n).astype(np.uint8)
    for name, arr in files.items():
        write_idx(directory / name, arr, compress=gz)
    return files


def test_dataset_download_into_cache(http_root, tmp_path, monkeypatch):
    root, url = http_root
    files = _fake_mnist(root)
    sums = {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in files}
    spec = idx_datasets.IdxSpec("mnist", tuple(str(i) for i in range(10)), (url,), sums, "n/a", {})
    monkeypatch.setitem(idx_datasets.SPECS, "mnist", spec)
    monkeypatch.setenv("SANITAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SANITAS_SYSTEM_DATA", str(tmp_path / "nowhere"))
    monkeypatch.delenv("SANITAS_DATA", raising=False)
    monkeypatch.delenv("SANITAS_OFFLINE", raising=False)
    ds = load_dataset("mnist", "test")
    assert ds.x.shape == (10, 1, 28, 28)
    assert ds.source == str(tmp_path / "cache" / "mnist")
    np.testing.assert_allclose(ds.x[:, 0].numpy() * 255, files["t10k-images-idx3-ubyte.gz"], atol=1e-3)


def test_dataset_download_with_bad_checksum_is_reported(http_root, tmp_path, monkeypatch):
    root, url = http_root
    files = _fake_mnist(root)
    sums = {name: "f" * 64 for name in files}
    spec = idx_datasets.IdxSpec("mnist", tuple(str(i) for i in range(10)), (url,), sums, "ask a friend", {})
    monkeypatch.setitem(idx_datasets.SPECS, "mnist", spec)
    monkeypatch.setenv("SANITAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SANITAS_SYSTEM_DATA", str(tmp_path / "nowhere"))
    monkeypatch.delenv("SANITAS_DATA", raising=False)
    monkeypatch.delenv("SANITAS_OFFLINE", raising=False)
    with pytest.raises(DatasetNotFoundError, match="SHA-256") as err:
        load_dataset("mnist", "train")
    assert "ask a friend" in str(err.value)
    assert not any((tmp_path / "cache" / "mnist").glob("*.gz"))
