"""Joining a multi-process (multi-host) JAX job, for the commands that run on pods and clusters."""

from __future__ import annotations

from flax_distil.errors import FlaxDistilError


def join_processes(coordinator=None, num_processes=None, process_id=None, auto=False) -> None:
    """Joins a multi-process JAX job: explicit coordinator ("host:port"), process count and id;
    or, with `auto`, what `jax.distributed.initialize()` detects (Cloud TPU, SLURM, Open MPI,
    JAX_COORDINATOR_ADDRESS...). Does nothing for a single process."""
    import jax

    explicit = (coordinator, num_processes, process_id)
    if any(value is not None for value in explicit):
        if any(value is None for value in explicit):
            raise FlaxDistilError("give --coordinator, --num-processes and --process-id together")
        if not 0 <= process_id < num_processes:
            raise FlaxDistilError(f"--process-id must be in 0..{num_processes - 1}")
        kwargs = dict(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    elif auto:
        kwargs = {}
    else:
        return
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as error:
        raise FlaxDistilError(f"cannot join the distributed job ({error})") from error
