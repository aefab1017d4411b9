"""Keep freed heap memory in the process, so each frame's tensors reuse pages already mapped.

PyTorch's CPU allocator has no cache: every activation is a ``malloc`` and a ``free``. glibc
serves blocks above its mmap threshold (at most 32 MiB, and a 480x640 activation of the
published network is 20-80 MB) with a fresh ``mmap`` and gives them back with ``munmap``, so the
next frame's tensor of the same size faults its pages in again, one by one, each zeroed by the
kernel. On our 2-core machine an eager forward pass at 480x640 spent more time in those page
faults than in arithmetic: 2.9-3.1 s per frame with the default allocator, 1.4-1.6 s once freed
memory is kept (``docs/benchmarks.md``, config ``eager-retained``). ONNX Runtime and TensorRT
have their own arenas and do not need this.

:func:`retain_freed_memory` tells glibc (``mallopt``) to serve large blocks from the heap
(``M_MMAP_MAX = 0``), not to hand freed memory back (``M_TRIM_THRESHOLD``), and to use one arena
for all threads (``M_ARENA_MAX = 1``; a thread arena cannot hold a block above 64 MiB, so the
video pipeline's inference thread would still mmap). The same effect as running under jemalloc
or tcmalloc, the usual advice for PyTorch CPU inference, without a preloaded library.

It is process-wide and lasts until the process ends: the process keeps its peak heap (for a
stream of same-sized frames that is the working set of one frame). Set
``REFUSION_RETAIN_MEMORY=0`` to leave the allocator alone. Linux with glibc only; elsewhere it
does nothing and says why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

# <malloc.h> parameter numbers (stable glibc ABI).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_lock = threading.Lock()
_status: str | None = None  # None: not asked yet


def _glibc():
    if platform.system() != "Linux":
        return None, f"not Linux ({platform.system()})"
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return None, f"C library is {libc_name or 'unknown'}, not glibc"
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), ""
    except OSError as exc:
        return None, f"cannot load libc: {exc}"


def retain_freed_memory() -> bool:
    """Keep freed memory for reuse (see the module docstring); idempotent, thread-safe.

    Returns:
        ``True`` when the allocator now retains memory (now or by an earlier call), ``False``
        when it was left alone (not glibc, or ``REFUSION_RETAIN_MEMORY=0``);
        :func:`memory_status` says which.
    """
    global _status
    with _lock:
        if _status is not None:
            return _status == "retained"
        if os.environ.get("REFUSION_RETAIN_MEMORY", "1").strip() == "0":
            _status = "system allocator (REFUSION_RETAIN_MEMORY=0)"
            return False
        libc, why = _glibc()
        if libc is None:
            _status = f"system allocator ({why})"
            return False
        ok = all(
            libc.mallopt(param, value) == 1
            for param, value in (
                (_M_ARENA_MAX, 1),
                (_M_TRIM_THRESHOLD, _INT_MAX),
                (_M_MMAP_MAX, 0),
            )
        )
        _status = "retained" if ok else "system allocator (mallopt refused)"
        return ok


def memory_status() -> str:
    """``retained``, or ``system allocator (...)`` with the reason, or ``system allocator``."""
    return _status or "system allocator"
