"""Progress and status lines that respect ``quiet`` and ``$SANITAS_QUIET``; warnings that do not.

On a terminal, progress is a tqdm bar. Anywhere else (a log file, a pipe, CI) a bar's carriage-return
updates would pile up in the file, so progress is a plain line every :data:`LINE_SECONDS` seconds and one
when the loop ends (``variants: 3/5 (12 s)``, ``variants: 5/5 done in 21 s``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: seconds between two progress lines when stderr is not a terminal
LINE_SECONDS = 10.0


def is_quiet(quiet: bool | None = None) -> bool:
    if quiet is not None:
        return quiet
    return os.environ.get("SANITAS_QUIET", "") not in ("", "0")


def _on_terminal() -> bool:
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty()) or "ipykernel" in sys.modules


def progress(iterable: Iterable[T], *, desc: str = "", total: int | None = None,
             quiet: bool | None = None, leave: bool = False) -> Iterable[T]:
    """``iterable`` with progress on stderr: a tqdm bar on a terminal, lines elsewhere, nothing if quiet."""
    if is_quiet(quiet):
        return iterable
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not _on_terminal():
        return _lines(iterable, desc, total)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, file=sys.stderr, dynamic_ncols=True)


def _lines(iterable: Iterable[T], desc: str, total: int | None) -> Iterator[T]:
    start = last = time.monotonic()
    done = 0
    of = f"/{total}" if total is not None else ""
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= LINE_SECONDS and done != total:
            log(f"{desc}: {done}{of} ({now - start:.0f} s)", quiet=False)
            last = now
    elapsed = time.monotonic() - start
    if done and (last > start or elapsed >= LINE_SECONDS / 5):
        log(f"{desc}: {done}{of} done in {elapsed:.0f} s", quiet=False)


def log(message: str, *, quiet: bool | None = None) -> None:
    """A status line on stderr (stdout is kept for results)."""
    if not is_quiet(quiet):
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr, shown also under ``quiet``: quiet hides progress, never what went wrong
    (a damaged checkpoint about to be retrained, stored results about to be replaced)."""
    print(f"sanitas: warning: {message}", file=sys.stderr, flush=True)
