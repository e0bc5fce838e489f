"""glibc malloc tuning for large CPU activations.

By default glibc serves every allocation above 128 KiB (adaptively up to 32 MiB) with a fresh
``mmap`` and returns freed memory to the OS, so each multi-megabyte activation of a CPU
forward pass page-faults again. Raising the mmap threshold and keeping freed memory in the heap
(what ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` do at start
time) removes those faults; ``mallopt`` applies the same settings from inside the process.
See bench/bench_dm.py for the measured effect. No-op where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 4 << 30, top_pad: int = 1 << 30) -> bool:
    """Apply the settings with ``mallopt``; True if glibc accepted all of them."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, min(mmap_threshold, 2**31 - 1))
    ok &= mallopt(M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1))
    ok &= mallopt(M_TOP_PAD, min(top_pad, 2**31 - 1))
    return bool(ok)
