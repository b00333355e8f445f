"""The stage process's memory allocator: glibc's malloc, set up by the CLI before a stage runs.

glibc serves each block of 128 KiB or more with an mmap of its own and hands freed memory at the
top of its heap back to the OS; both thresholds only adapt to the sizes a process frees. A
network's activations are allocated and freed on every forward pass (ResNet-20 at a batch of
256 in bf16: 8 MiB per layer output), so with those defaults much of each pass's memory is
mapped afresh and every page of it faulted in and zeroed by the kernel. On a 2-core CPU the
evaluate stage's forward passes ran about 1.5x faster with freed memory kept
(docs/performance.md, "Freed memory is kept"); PyTorch's CPU performance guide gets the same by
preloading jemalloc or tcmalloc.

`keep_freed_memory` serves blocks below 32 MiB from the heap and keeps up to 1 GiB of freed heap
for reuse. The price: a process's resident memory stays near its peak until it exits, which a
short-lived stage process can afford. Speed only: the same computations give the same values.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # bytes; the largest glibc accepts on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024  # bytes of free memory at the heap's top kept from the OS
# A user's own malloc settings win: glibc reads these at start-up.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Apply the thresholds above where the C library is glibc and the environment sets none of
    `USER_SETTINGS`; whether they were applied. Elsewhere (macOS, Windows, musl) nothing
    changes."""
    if not sys.platform.startswith("linux") or any(n in os.environ for n in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (musl has a no-op mallopt)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Setting either turns off glibc's own adjustment of both, so both are set.
    if not mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
