"""Keep freed host memory in the process, so XLA's CPU temporaries are not page-faulted anew.

glibc's malloc serves every block above 32 MiB with its own `mmap` and gives it back with
`munmap` when freed. XLA on CPU allocates a step's temporaries afresh on every call (a train
step's logits, their gradient and the cross-attention keys and values are 40-210 MB each for
tiny.en at 16 x 64 labels), so every step touches ~1 GB of new pages: 250,000 page faults, about
a third of the step's CPU time spent in the kernel on this project's 2-core VM. Served from one
heap that is never trimmed, the same memory is reused from step to step with no faults
(`run_scripts/bench_train.py --parts` shows both).

The cost: the process keeps its peak heap (it never returns freed memory to the system) and
all threads share one malloc arena. Both suit a process that repeats the same computation.
Call `keep_freed_memory()` before JAX starts its CPU client: threads that already have an arena
of their own keep using it. `flax-distil` does so for every command; set
FLAX_DISTIL_KEEP_FREED_MEMORY=0 to leave malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: the largest threshold it can be told


def keep_freed_memory() -> bool:
    """Tells glibc's malloc to serve large blocks from the heap and keep what is freed.

    Returns whether the settings took (False off Linux/glibc, or when switched off by
    FLAX_DISTIL_KEEP_FREED_MEMORY=0)."""
    if os.environ.get("FLAX_DISTIL_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    # One arena: a thread's own arena is at most 64 MiB and maps anything larger separately.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
