"""Process-level settings for fast, reproducible runs on CPUs (used by the command-line tools)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for this setting on 64-bit systems


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS after every step.

    PyTorch on the CPU allocates and frees the same large activation buffers every training step. With
    glibc's defaults, buffers above a threshold come from fresh ``mmap`` pages, and touching fresh pages
    costs page faults (``scs-gan bench --no-tune-malloc`` shows hundreds to thousands per layer step in its
    ``faults/step`` column). Raising the mmap and trim thresholds removes them (the effect PyTorch's CPU
    tuning guide gets from jemalloc or tcmalloc). Returns whether the setting was applied (Linux, glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)
