"""Model-sized buffers go back to the operating system when freed.

glibc serves an allocation above its mmap threshold with its own mapping, returned on
free; but it raises that threshold to the size of each such block freed (up to 32 MB), after
which buffers of that size come from the heap, where freed ones are kept and fragment. A
server that folds thousands of LoRA-sized updates one after another then grows with the
number of clients (measured: 0.80 GB for 200 updates of 9.8 MB, 0.12 GB with the threshold
fixed; ``benchmarks/server_memory.py``). Fixing the threshold (``mallopt``) turns that
adjustment off. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
THRESHOLD = 1 << 20  # blocks of 1 MiB and more are mapped, and unmapped when freed
_done = False


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold at 1 MiB, once per process; False where there is no
    glibc (or it refuses)."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        ok = bool(libc and libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
