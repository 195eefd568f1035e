"""JAX's persistent compilation cache for a training run (`checkpoint.compilation_cache`).

A restart (after a spot preemption, a crash, or to train further) would otherwise recompile
every program, minutes for a large model; with the cache, programs compiled by an earlier run
in the same workdir are read back instead. The cache directory is relative to the workdir
unless absolute (or a `gs://` URL, which JAX reads through `etils.epath`); programs that take
less than `MIN_COMPILE_SECONDS` to compile are not worth a file and are not stored. `reused()`
counts the programs read back, which `train` reports at the end of a run.
"""

from __future__ import annotations

import jax
from etils import epath
from jax.experimental.compilation_cache import compilation_cache

MIN_COMPILE_SECONDS = 1.0
_reused = {"programs": 0, "listening": False}


def _count(event: str, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _reused["programs"] += 1


def reused() -> int:
    """Programs this process read from the persistent compilation cache so far."""
    return _reused["programs"]


def cache_directory(setting: str | None, workdir: epath.Path) -> str | None:
    """Where the cache lives for `checkpoint.compilation_cache` = `setting` (None: off)."""
    if not setting:
        return None
    if "://" in setting or setting.startswith("/"):
        return setting
    return str(workdir / setting)


def enable_compilation_cache(setting: str | None, workdir: epath.Path) -> str | None:
    """Points JAX's persistent compilation cache at the run's directory; returns it."""
    directory = cache_directory(setting, workdir)
    if directory is not None and not _reused["listening"]:
        jax.monitoring.register_event_listener(_count)
        _reused["listening"] = True
    if directory is None or jax.config.jax_compilation_cache_dir == directory:
        return directory
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    # JAX opens its cache once, at the first compile: reopen it at the new directory.
    compilation_cache.reset_cache()
    return directory
