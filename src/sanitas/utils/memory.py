"""Keep memory that sanitas' CPU passes free mapped for the next pass, without changing the process.

A check on CPU runs many forward/backward passes of the same shape. glibc's malloc returns the
free memory at the top of its heap to the system once it exceeds the trim threshold (``free``
calls ``sbrk`` with a negative size), and serves blocks above its mmap threshold with fresh
``mmap`` calls, so the next pass page-faults the same memory in again and the kernel zeroes it.
Measured on 2 cores (torch 2.13, quiet machine): resnet-small 6-11k minor faults per 62-input
pass, 22.5-28.8 ms against 15 ms with the memory kept.

Two ways to keep it, both glibc only and CPU only (accelerators have their own caching
allocators):

* **A heap reserve for a scope** (``hold_freed_memory(device, reserve=n)``, by default
  :data:`RUN_RESERVE`: the engine holds it around a whole check; a single explanation asks for
  none, since setting it up, about 4 ms, costs more than it saves in one or two passes). On
  entering the outermost scope sanitas mallocs ``n`` bytes in blocks of :data:`RESERVE_BLOCK`
  (below glibc's initial mmap threshold, which only ever grows, so they come from the heap and
  move no threshold), keeps the highest block and frees the others. The freed memory now lies
  below a live block, so it is not the heap's top and glibc does not trim it: the passes reuse
  it. On leaving the scope the highest block is freed too, and glibc trims as it always does.
  No malloc setting is touched; afterwards glibc is where any program that allocated and freed
  the same memory would leave it. Measured (IG on 64 images, one thread): resnet-small 80-160k
  -> 9-11k faults per call, 1.76-1.79 -> 1.04-1.37 s.
* **Process-wide, opt-in** (``SANITAS_HOLD_MEMORY=process``, or ``MODE = "process"``, like
  ``torch.backends.cudnn.benchmark``): every outermost scope, including a single explanation,
  sets ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to :data:`HOLD_BYTES`, and on
  leaving sets the trim threshold to 64 MiB (glibc's own value once its adaptive threshold has
  grown to 32 MiB). It keeps memory across calls too, but it cannot be undone: glibc has no getter
  for its thresholds, and any ``mallopt`` of ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD`` or
  ``M_TOP_PAD`` also switches off, for the rest of the process, the adaptive thresholds glibc
  starts with (its ``no_dyn_threshold`` flag; nothing sets it back). So the setting outlives the
  call, for every allocation of the user's program: hence opt-in. No ``malloc_trim(0)`` at the
  end: it also unmaps the heap's interior, and the next call faults it back in (a 256-image
  gradient 90 ms against 61 ms).

``SANITAS_HOLD_MEMORY=0`` turns both off, and so do malloc thresholds the user set
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES=glibc.malloc...``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Iterator, Mapping

import torch

from sanitas.utils.env import OFF

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit systems (4 MiB * sizeof(long))
HOLD_BYTES = 1 << 30
TRIM_AFTER = 2 * MMAP_THRESHOLD_MAX
#: blocks of the scope reserve: below glibc's smallest mmap threshold (128 KiB), so from the heap
RESERVE_BLOCK = 120 * 2**10
#: the reserve the engine holds around a check: a few 48 MiB passes (explain._core.inputs_per_pass)
RUN_RESERVE = 128 * 2**20
HOLD_MODES = ("scope", "process", "off")


def _user_tunes_malloc(env: Mapping[str, str]) -> bool:
    """The user set glibc's malloc thresholds already (environment or tunables): leave them alone."""
    return any(k in env for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) or \
        "glibc.malloc." in env.get("GLIBC_TUNABLES", "")


def mode_from_env(env: Mapping[str, str]) -> str:
    """``"off"`` (SANITAS_HOLD_MEMORY=0/false/no/off, or malloc thresholds the user set),
    ``"process"`` (SANITAS_HOLD_MEMORY=process, the opt-in), else ``"scope"`` (the default)."""
    value = (env.get("SANITAS_HOLD_MEMORY") or "").strip().lower()
    if value in OFF or _user_tunes_malloc(env):
        return "off"
    return "process" if value == "process" else "scope"


#: ``"scope"`` (default: heap reserves for the scopes that ask, no setting changed), ``"process"``
#: (opt-in: glibc's thresholds, changed for the rest of the process) or ``"off"``
MODE = mode_from_env(os.environ)

_lock = threading.Lock()
_depth = 0
_held: list[int] = []  # the reserve's highest block while a scope holds one
#: True once sanitas has called ``mallopt`` in this process (only ever with MODE "process").
changed_malloc = False


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


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
    lib.malloc.argtypes = (ctypes.c_size_t,)
    lib.malloc.restype = ctypes.c_void_p
    lib.free.argtypes = (ctypes.c_void_p,)
    lib.free.restype = None
    if hasattr(lib, "mallinfo2"):  # glibc 2.33+
        lib.mallinfo2.restype = _MallInfo2
    return lib


def mmapped_blocks(lib) -> int | None:
    """How many blocks glibc's malloc currently serves by ``mmap`` (None without ``mallinfo2``)."""
    return int(lib.mallinfo2().hblks) if hasattr(lib, "mallinfo2") else None


def _reserve(lib, nbytes: int) -> int | None:
    """Extend the heap by about ``nbytes`` and keep only its highest block: the rest is free memory
    below a live block, which glibc keeps mapped. Returns that block (None when not possible)."""
    before = mmapped_blocks(lib)
    first = lib.malloc(RESERVE_BLOCK)
    if not first:
        return None
    if before is not None and mmapped_blocks(lib) != before:  # a lowered mmap threshold: not from the heap
        lib.free(first)
        return None
    blocks = [first] + [lib.malloc(RESERVE_BLOCK) for _ in range(max(0, nbytes // RESERVE_BLOCK - 1))]
    blocks = [b for b in blocks if b]
    top = max(blocks)
    for b in blocks:
        if b != top:
            lib.free(b)
    return top


@contextlib.contextmanager
def hold_freed_memory(device: torch.device | str = "cpu", reserve: int = RUN_RESERVE) -> Iterator[None]:
    """Keep memory freed between passes mapped until the outermost scope ends (glibc, passes on
    ``device`` ``"cpu"`` only): by a heap reserve of ``reserve`` bytes held for the scope, or, with
    the process-wide opt-in (:data:`MODE` ``"process"``), by glibc's thresholds."""
    global _depth, changed_malloc
    process = MODE == "process"
    lib = glibc() if (process or (MODE == "scope" and reserve > 0)) and torch.device(device).type == "cpu" else None
    if lib is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            if process:
                changed_malloc = True
                lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
                lib.mallopt(M_TRIM_THRESHOLD, HOLD_BYTES)
            else:
                block = _reserve(lib, reserve)
                _held.extend([block] if block else [])
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                if process:
                    lib.mallopt(M_TRIM_THRESHOLD, TRIM_AFTER)
                while _held:
                    lib.free(_held.pop())
