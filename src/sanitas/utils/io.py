"""Atomic file writes and checksums.

A reader never sees a half-written file: data goes to a temporary file in the same
directory, is flushed to disk, and is then renamed over the target (``os.replace`` is
atomic on POSIX). An interrupted run leaves at most a stray ``.tmp`` file behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write via a temporary file and a rename; the file gets the usual 0o666 & ~umask permissions
    (mkstemp's 0o600 would make reports and results unreadable to other users)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_table(path: str | os.PathLike, table) -> Path:
    """Write a pandas DataFrame atomically as Parquet or CSV (chosen by the suffix), without its index."""
    path = Path(path)
    if path.suffix == ".parquet":
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        return atomic_write_bytes(path, buf.getvalue())
    if path.suffix == ".csv":
        return atomic_write_text(path, table.to_csv(index=False))
    raise ValueError(f"atomic_write_table writes .parquet or .csv files, not {path.name!r}")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> str:
    """Save ``obj`` with ``torch.save`` atomically; returns the SHA-256 of the bytes written."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
