"""The C allocator's large blocks, given back to the system when freed (the worker's and the projector's heap).

glibc's malloc serves a block of 128 KiB or more with its own mmap, unmapped when freed, but raises that
threshold to the size of each such block that is freed (up to 32 MiB): once the first large block was freed (a
chunk of a chunked job is ~1 MB of JSON, a fetched batch of records up to 1 MiB), every later one came from the
heap, which only shrinks from its top, so the holes they left between long-lived objects stayed resident. Measured
on a 300,000-learner job (docs/scaling.md, "The worker's cut"): the worker's heap grew to 48 MB and stayed there
(resident 160 MB while sending), against 36 MB (145 MB) with the thresholds fixed. An mmap per block of 128 KiB
or more costs microseconds, against the ~1 MB of work each one carries."""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
LARGE_BLOCK = 128 * 1024  # glibc's starting threshold, kept


def return_large_blocks() -> bool:
    """Fix glibc's mmap and trim thresholds at 128 KiB; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the C library this process already uses
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc's own: musl has a mallopt that does nothing
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * LARGE_BLOCK))
