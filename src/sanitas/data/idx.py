"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST.

Format (big-endian): two zero bytes, a type code, the number of dimensions ``d``, then
``d`` unsigned 32-bit sizes, then the data in C order. Files may be gzip-compressed.
The reader checks the magic number, the type code, that the header is complete and that
the payload has exactly the size the header announces.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from sanitas.errors import DataFormatError

# type code -> numpy dtype (big-endian where it matters)
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {np.dtype(v).newbyteorder("=") if v.itemsize > 1 else v: k for k, v in IDX_TYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(2)
    try:
        if head == GZIP_MAGIC:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:  # corrupt or truncated gzip stream
        raise DataFormatError(f"{path}: cannot decompress ({exc}); the file is corrupt or "
                              "truncated, delete it and fetch it again") from exc


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a native-endian numpy array."""
    if len(data) < 4:
        raise DataFormatError(f"{source}: only {len(data)} bytes, too short for an IDX header")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in IDX_TYPES:
        raise DataFormatError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000 then a type code "
            f"in {[hex(c) for c in IDX_TYPES]}); this is not an IDX file")
    if ndim == 0:
        raise DataFormatError(f"{source}: IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{source}: truncated IDX header ({len(data)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header
    if payload != expected:
        what = "truncated" if payload < expected else "has trailing bytes"
        raise DataFormatError(
            f"{source}: file {what}: header announces shape {shape} ({expected} bytes of data) "
            f"but {payload} bytes follow; delete the file and fetch it again")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip) and return a native-endian numpy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), source=str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as IDX (gzip when ``compress`` or when the name ends in ``.gz``)."""
    path = Path(path)
    arr = np.asarray(array)
    key = arr.dtype.newbyteorder("=") if arr.dtype.itemsize > 1 else arr.dtype
    if key not in _CODES:
        raise DataFormatError(f"dtype {arr.dtype} cannot be stored in IDX; use one of "
                              f"{sorted(str(d) for d in _CODES)}")
    code = _CODES[key]
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    body = np.ascontiguousarray(arr.astype(IDX_TYPES[code])).tobytes()
    blob = header + body
    if compress is None:
        compress = path.suffix == ".gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(blob)
    else:
        path.write_bytes(blob)
    return path
