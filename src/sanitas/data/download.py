"""Checked downloads into the cache.

Each file is fetched to a temporary name, its SHA-256 compared with the expected value,
and only then renamed into place. A mismatch deletes the temporary file and raises
:class:`ChecksumError`; nothing unverified is ever left where a loader would find it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from sanitas.errors import ChecksumError, DownloadError
from sanitas.utils.progress import log

Opener = Callable[[str, float], BinaryIO]


def _default_opener(url: str, timeout: float) -> BinaryIO:
    req = urllib.request.Request(url, headers={"User-Agent": "sanitas"})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https only, checked below)


def download(urls: str | Sequence[str], dest: str | os.PathLike, sha256: str, *,
             opener: Opener | None = None, timeout: float = 60.0, retries: int = 2,
             quiet: bool | None = None) -> Path:
    """Download the first working URL of ``urls`` to ``dest`` and verify its SHA-256.

    If ``dest`` already exists with the right checksum nothing is fetched. Raises
    :class:`ChecksumError` when a download has the wrong checksum (after trying every
    mirror) and :class:`DownloadError` when no mirror can be reached.
    """
    dest = Path(dest)
    urls = [urls] if isinstance(urls, str) else list(urls)
    if dest.exists() and _sha256(dest) == sha256:
        return dest
    opener = opener or _default_opener
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    bad_checksum: list[str] = []
    for url in urls:
        if not url.startswith(("http://", "https://")):
            errors.append(f"{url}: only http(s) URLs are supported")
            continue
        for attempt in range(retries + 1):
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            try:
                log(f"downloading {url}", quiet=quiet)
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, opener(url, timeout) as resp:
                    for block in iter(lambda: resp.read(1 << 16), b""):
                        h.update(block)
                        out.write(block)
                digest = h.hexdigest()
                if digest != sha256:
                    bad_checksum.append(f"{url}: got sha256 {digest}, expected {sha256}")
                    os.unlink(tmp)
                    break  # a wrong file will not get better by retrying this mirror
                os.replace(tmp, dest)
                return dest
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                errors.append(f"{url} (attempt {attempt + 1}): {exc}")
                if os.path.exists(tmp):
                    os.unlink(tmp)
                if attempt < retries:
                    time.sleep(min(2.0 ** attempt, 5.0))
    if bad_checksum:
        raise ChecksumError(
            f"download of {dest.name} failed its SHA-256 check: " + "; ".join(bad_checksum)
            + ". The server sent a different file; nothing was saved. Fetch the file yourself from a "
            f"trusted source and place it at {dest}")
    raise DownloadError(f"could not download {dest.name}: " + "; ".join(errors)
                        + f". Check your network or place the file at {dest} yourself")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
