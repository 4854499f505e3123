"""Keep freed memory mapped during sanitas' CPU passes instead of page-faulting it in every pass.

An explanation on CPU runs many forward/backward passes of the same shape. glibc's malloc serves
each pass's larger tensors with fresh ``mmap`` calls, or trims the heap after the pass, so the next
pass page-faults the same memory in again and the kernel zeroes it. Measured on 2 cores (torch
2.13, one gradient pass): resnet-small 6-11k minor faults per 62-input pass, 22.5-28.8 ms against
15 ms with the memory kept; vgg-small 42 ms against 30 ms. Pass sizes alone cannot avoid it:
which tensors glibc maps depends on the order and sizes of every allocation before.

:func:`hold_freed_memory` sets glibc's ``M_MMAP_THRESHOLD`` to its maximum (32 MiB: smaller
blocks come from the heap) and ``M_TRIM_THRESHOLD`` to :data:`HOLD_BYTES` (freed heap memory is
kept for the next pass) while the outermost scope is open. On leaving it, the trim threshold goes
to 64 MiB: glibc's own value once its adaptive mmap threshold has grown to 32 MiB, which PyTorch
workloads reach quickly. The next ``free`` then returns the heap top beyond 64 MiB to the system,
as glibc would; memory inside the heap stays mapped, as it always does with glibc. An explicit
``malloc_trim(0)`` at the end would also unmap that, and the next call would fault it all back
in: a 256-image gradient took 90 ms that way against 61 ms. The mmap threshold stays fixed at
32 MiB (glibc cannot go back to adapting it). Elsewhere than glibc this does nothing.
``SANITAS_HOLD_MEMORY=0`` turns it off, and so do malloc thresholds the user set
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES=glibc.malloc...``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Iterator

import torch

from sanitas.utils.env import env_switch

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit systems (4 MiB * sizeof(long))
HOLD_BYTES = 1 << 30
TRIM_AFTER = 2 * MMAP_THRESHOLD_MAX


def _user_tunes_malloc(env) -> bool:
    """The user set glibc's malloc thresholds already (environment or tunables): leave them alone."""
    return any(k in env for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) or \
        "glibc.malloc." in env.get("GLIBC_TUNABLES", "")


ENABLED = env_switch("SANITAS_HOLD_MEMORY") and not _user_tunes_malloc(os.environ)

_lock = threading.Lock()
_depth = 0


@functools.cache
def glibc():
    """The C library when it is glibc (with ``mallopt``), else None (looked up once)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    lib.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    lib.mallopt.restype = ctypes.c_int
    return lib


@contextlib.contextmanager
def hold_freed_memory(device: torch.device | str = "cpu") -> Iterator[None]:
    """Keep memory freed between passes mapped until the outermost scope ends (glibc, and
    passes on ``device`` ``"cpu"``, only: accelerator memory has its own caching allocator)."""
    global _depth
    lib = glibc() if ENABLED and torch.device(device).type == "cpu" else None
    if lib is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
            lib.mallopt(M_TRIM_THRESHOLD, HOLD_BYTES)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                lib.mallopt(M_TRIM_THRESHOLD, TRIM_AFTER)
