"""Progress bars and status lines that respect ``quiet`` and ``$SANITAS_QUIET``; warnings that do not."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def is_quiet(quiet: bool | None = None) -> bool:
    if quiet is not None:
        return quiet
    return os.environ.get("SANITAS_QUIET", "") not in ("", "0")


def progress(iterable: Iterable[T], *, desc: str = "", total: int | None = None,
             quiet: bool | None = None, leave: bool = False) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr unless quiet."""
    return tqdm(iterable, desc=desc, total=total, disable=is_quiet(quiet), leave=leave,
                file=sys.stderr, dynamic_ncols=True)


def log(message: str, *, quiet: bool | None = None) -> None:
    """A status line on stderr (stdout is kept for results)."""
    if not is_quiet(quiet):
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr, shown also under ``quiet``: quiet hides progress, never what went wrong
    (a damaged checkpoint about to be retrained, stored results about to be replaced)."""
    print(f"sanitas: warning: {message}", file=sys.stderr, flush=True)
