"""Meshes, placement and multi-host helpers: joining a multi-process job, the (data, fsdp) mesh,
parameter and batch shardings, global batches from host-local data, gathering to every host.

The mesh has a `data` axis and an `fsdp` axis. Batches are split over both (every device gets
its own rows); parameters and optimiser state are replicated over `data` and, when `fsdp` > 1,
each array's largest divisible dimension is split over `fsdp` (ZeRO-3 style: XLA gathers the
weights where they are used). Each host builds only its own rows of a global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flax_distil.errors import FlaxDistilError

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A (data, fsdp) mesh over all devices; data = -1 takes every device fsdp leaves."""
    devices = list(devices if devices is not None else jax.devices())
    if data == -1:
        if len(devices) % fsdp:
            raise FlaxDistilError(f"mesh.fsdp={fsdp} does not divide {len(devices)} devices")
        data = len(devices) // fsdp
    if data * fsdp != len(devices):
        raise FlaxDistilError(
            f"mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices; there are {len(devices)}"
        )
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def local_mesh(shard_weights: bool = False) -> Mesh:
    """This process's devices as a mesh for inference: the batch split over all of them, and
    the weights copied to each, or with `shard_weights` split over them (the `fsdp` axis)."""
    devices = jax.local_devices()
    return make_mesh(1 if shard_weights else -1, len(devices) if shard_weights else 1, devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def _fsdp_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """Split the largest dimension divisible by `fsdp`; replicate small or indivisible arrays."""
    if fsdp == 1 or not shape or int(np.prod(shape)) < 1024:
        return PartitionSpec()
    candidates = [axis for axis, size in enumerate(shape) if size % fsdp == 0]
    if not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda a: shape[a])
    spec = [None] * len(shape)
    spec[axis] = "fsdp"
    return PartitionSpec(*spec)


def state_shardings(mesh: Mesh, tree):
    """A NamedSharding for every array leaf of `tree` (arrays or ShapeDtypeStructs)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda leaf: NamedSharding(mesh, _fsdp_spec(leaf.shape, fsdp)), tree)


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Global arrays from this host's rows (numpy arrays only; other entries are dropped).

    The global batch size is the host batch times the process count; the rows of process p
    sit at [p * host_batch, (p + 1) * host_batch).
    """
    sharding = batch_sharding(mesh)
    arrays = {}
    for name, value in local_batch.items():
        if not isinstance(value, np.ndarray):
            continue
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        arrays[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return arrays


def spans_processes(mesh: Mesh) -> bool:
    return any(device.process_index != jax.process_index() for device in mesh.devices.flat)


def shard_rows(mesh: Mesh, array: np.ndarray) -> jax.Array:
    """`array` [rows, ...], the same on every process, as a global array split by rows over the
    mesh; on a mesh of several processes each one contributes only its own share of rows."""
    sharding = batch_sharding(mesh)
    if not spans_processes(mesh):
        return jax.device_put(array, sharding)
    share = len(array) // jax.process_count()
    start = jax.process_index() * share
    return jax.make_array_from_process_local_data(sharding, array[start : start + share])


def gather_rows(array: jax.Array) -> np.ndarray:
    """A row-split global array's whole value, on every process, as numpy."""
    if array.is_fully_addressable:
        return np.asarray(array)
    return allgather(array, tiled=True)


def check_batch_size(mesh: Mesh, batch_size: int, microbatches: int) -> int:
    """This host's batch size; every device must get whole rows of every microbatch."""
    devices, hosts = mesh.devices.size, jax.process_count()
    if batch_size % (devices * microbatches):
        raise FlaxDistilError(
            f"train.batch_size={batch_size} must be divisible by devices x microbatches "
            f"= {devices} x {microbatches}"
        )
    return batch_size // hosts


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


def fetch_whole(tree):
    """`tree` with every array that other hosts hold parts of made whole on this host (numpy):
    a replicated one from a local copy, a sharded one gathered from all hosts (a collective:
    every host must call this with the same tree). Leaves this host holds whole stay as they
    are."""

    def whole(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return leaf
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        return allgather(leaf, tiled=True)

    return jax.tree.map(whole, tree)


def allgather(tree, tiled: bool = False):
    """Every process's `tree` on every process, as numpy: leaves stacked on a new leading axis,
    or with `tiled` concatenated along the first (a global array: its whole value). A single
    process needs no communication."""
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: np.asarray(x) if tiled else np.asarray(x)[None], tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=tiled))
