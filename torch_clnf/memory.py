"""Freed memory kept in the process, so that the large tensors of batched fits do not page-fault.

By default glibc's ``malloc`` gives a freed block above a few megabytes back to the system at
once (``munmap``, or trimming the heap), so the next tensor of that size is fresh memory whose
every page faults on first touch. A batched fit allocates and frees tensors of tens of megabytes
hundreds of times (the sampled areas, their taps, the correlations), and on the CPU those page
faults cost as much as the arithmetic: keeping the memory makes a fit of 64 faces about 1.2×
faster (area sampling 2×). The price is that the process keeps the peak of its heap.
"""
from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

OPT_OUT = "TORCH_CLNF_KEEP_FREED_MEMORY"

_applied = False


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Serve blocks below ``threshold_bytes`` from malloc's heap and never trim it.

    Called by :func:`torch_clnf.load_model` for CPU models. Applies to the whole process, once;
    ``TORCH_CLNF_KEEP_FREED_MEMORY=0`` in the environment turns it off.

    Returns:
        True where applied (Linux with glibc); False elsewhere (other C libraries, macOS,
        Windows) or when turned off, which changes nothing.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: setting either turns off glibc's adaptive thresholds
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _applied
