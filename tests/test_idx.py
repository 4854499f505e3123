import gzip
import struct

import numpy as np
import pytest

from sanitas.data.idx import parse_idx, read_idx, write_idx
from sanitas.errors import DataFormatError, SanitasError


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_roundtrip(tmp_path, compress, dtype):
    arr = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.idx.gz" if compress else "a.idx"), arr)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, arr)


def test_header_is_big_endian(tmp_path):
    # an MNIST-like label file written by hand: magic 0x00000801, count 3
    raw = struct.pack(">I", 0x00000801) + struct.pack(">I", 3) + bytes([7, 2, 1])
    (tmp_path / "labels").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels"), [7, 2, 1])
    # int32 payload must be decoded big-endian as well
    raw = struct.pack(">I", 0x00000C01) + struct.pack(">I", 2) + struct.pack(">2i", 1, -2)
    np.testing.assert_array_equal(parse_idx(raw), [1, -2])


def test_bad_magic(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataFormatError, match="magic"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")  # unknown type code
    with pytest.raises(DataFormatError, match="magic"):
        read_idx(p)


def test_truncated_payload(tmp_path):
    arr = np.zeros((10, 28, 28), dtype=np.uint8)
    p = write_idx(tmp_path / "imgs", arr)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match="truncated"):
        read_idx(p)


def test_truncated_header_and_trailing_bytes(tmp_path):
    p = tmp_path / "h"
    p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 10))
    with pytest.raises(DataFormatError, match="header"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x01\x02\x03")
    with pytest.raises(DataFormatError, match="trailing"):
        read_idx(p)


def test_truncated_gzip_stream(tmp_path):
    p = write_idx(tmp_path / "imgs.gz", np.zeros((100, 28, 28), dtype=np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SanitasError):
        read_idx(p)


def test_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    p = write_idx(tmp_path / "plain", arr, compress=True)
    with open(p, "rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(p), arr)
    assert gzip.decompress(p.read_bytes())[:4] == b"\x00\x00\x08\x02"
