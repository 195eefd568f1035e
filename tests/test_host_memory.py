"""Host memory: with flax-distil's malloc settings, a freed large block is reused without new
page faults; with malloc as it ships (FLAX_DISTIL_KEEP_FREED_MEMORY=0) it is faulted in anew."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# A fresh process (the settings must come before any thread has its own malloc arena): malloc,
# touch and free 256 MB, then do it again and count the page faults of the second time. (Not
# with numpy, which asks the kernel for huge pages on its own.)
PROBE = """
import ctypes, json, resource
from flax_distil.host_memory import keep_freed_memory
kept = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def faults_of_touching(size=256 * 2**20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_touching()
print(json.dumps({"kept": kept, "faults": faults_of_touching()}))
"""
PAGES = 256 * 2**20 // 4096


def _probe(keep: str) -> dict:
    env = dict(os.environ, FLAX_DISTIL_KEEP_FREED_MEMORY=keep)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_is_reused_without_page_faults():
    kept, shipped = _probe("1"), _probe("0")
    assert kept["kept"] and not shipped["kept"]
    assert shipped["faults"] > PAGES // 2  # malloc as it ships maps the block anew
    assert kept["faults"] < PAGES // 50  # the kept heap serves it from pages already there
