"""Helpers shared by the benchmark scripts: CPU pinning, timing, the PyTorch peer process."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # the PyTorch peer's env may not have flax_distil installed
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "PyTorch was not found" line


def pin_threads(threads: int) -> None:
    """Restricts this process (and its children) to `threads` cores, before jax/torch start,
    and gives it the host-memory settings `flax-distil` runs with (`host_memory`), unless
    FLAX_DISTIL_KEEP_FREED_MEMORY=0 (how `run_peer` runs a peer with malloc as it ships)."""
    from flax_distil.host_memory import keep_freed_memory

    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cores[:threads])
    keep_freed_memory()


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def median_seconds_interleaved(fns: dict, repeats: int) -> dict:
    """Median wall time of each `fn()` over `repeats` rounds that time every function once,
    in turn (after one warm-up call each): ratios between them then see the same machine
    state, not whatever load or clock drift one function's turn happened to meet."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def reference_python() -> str:
    python = os.environ.get("FLAX_DISTIL_REFERENCE_PYTHON", str(REPO / ".venv-ref/bin/python"))
    if not Path(python).exists():
        sys.exit(f"error: no PyTorch reference env at {python}; run bash run_scripts/setup_env.sh")
    return python


def run_peer(script: str, *args: str, keep_freed_memory: bool = False) -> dict:
    """Runs `script --peer ARGS` in the PyTorch reference env; returns its JSON line.

    The peer runs with glibc's malloc as it ships unless `keep_freed_memory`: PyTorch's CPU
    allocator sits on malloc too, so with flax-distil's host-memory settings it stops
    page-faulting its temporaries as well (`run_scripts/bench_train.py` reports both)."""
    env = dict(os.environ, FLAX_DISTIL_KEEP_FREED_MEMORY="1" if keep_freed_memory else "0")
    result = subprocess.run(
        [reference_python(), script, "--peer", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if result.returncode:
        sys.exit(f"error: the PyTorch peer failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
