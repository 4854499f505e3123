"""Atomic file writes, checksums, checked reads and the lock of a results directory.

A reader never sees a half-written file: data goes to a temporary file in the same
directory, is flushed to disk, and is then renamed over the target (``os.replace`` is
atomic on POSIX). An interrupted run leaves at most a stray ``.tmp`` file behind.
A directory that cannot be written (read-only, full, not a real file system such as ``/proc``)
and a file that cannot be read back (truncated, damaged) raise :class:`StorageError` naming the
path and the fix. :func:`directory_lock` gives one process at a time a results directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sanitas.errors import ResultsBusyError, StorageError


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


def storage_error(exc: OSError, path: str | os.PathLike, doing: str = "write") -> StorageError:
    """An OS error on ``path`` as a :class:`StorageError` whose message says what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space there or choose another directory"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "choose a directory you can write to"
    else:
        fix = "choose an ordinary, writable directory" if doing == "write" else "check the path"
    err = StorageError(f"cannot {doing} {path}: {exc.strerror or exc}; {fix}")
    err.errno = exc.errno
    return err


def ensure_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p path``, as a :class:`StorageError` when the directory cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, path) from None
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write via a temporary file and a rename; the file gets the usual 0o666 & ~umask permissions
    (mkstemp's 0o600 would make reports and results unreadable to other users). A failed write
    (full disk, read-only directory) leaves the old file in place and raises :class:`StorageError`."""
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            raise storage_error(exc, path) from None
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
    """A JSON file's content; a :class:`StorageError` naming the file when it is unreadable or damaged."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise storage_error(exc, path, "read") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError: truncated or overwritten
        raise StorageError(f"{path} is damaged (truncated or overwritten: {exc}); delete it or re-run the "
                           "command that wrote it") from None


def read_table(path: str | os.PathLike):
    """A Parquet or CSV table written by :func:`atomic_write_table`; a :class:`StorageError` naming the
    file when it is unreadable or damaged (pandas and pyarrow raise a dozen different errors)."""
    import pandas as pd

    path = Path(path)
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise storage_error(exc, path, "read") from None
        raise StorageError(f"{path} is damaged ({exc}); delete it or re-run the command that wrote it") from None
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, ParserError, EmptyDataError, UnicodeDecodeError...
        raise StorageError(f"{path} is damaged ({type(exc).__name__}: {exc}); delete it or re-run the command "
                           "that wrote it") from None


# -- one writer per results directory ------------------------------------------------------------

LOCK_NAME = ".sanitas.lock"
_held: dict[str, list] = {}          # resolved directory -> [file descriptor, depth]
_held_guard = threading.Lock()


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive OS lock (``flock``) on ``directory`` for the block, creating it if needed.

    A second process that asks for the same directory gets :class:`ResultsBusyError` at once
    (never a wait, never two writers); the lock dies with its process, so a killed run never
    leaves the directory locked. Re-entrant within a process (a study locks its directory and
    each experiment its own). ``directory/.sanitas.lock`` holds the owner's process id.
    """
    import fcntl

    d = ensure_dir(directory)
    key = str(d.resolve())
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
            reentered = True
        else:
            reentered = False
    if not reentered:
        lock_path = d / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as exc:
            raise storage_error(exc, d) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise ResultsBusyError(f"{d} is being written by another sanitas run (process {owner}); wait for it to "
                                   "finish, or give this run its own output directory") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only for the message; a full disk must not stop the lock
        with _held_guard:
            _held[key] = [fd, 1]
    try:
        yield d
    finally:
        with _held_guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                os.close(entry[0])  # closing the descriptor releases the flock
