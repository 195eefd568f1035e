"""One process of the two-process file sharding test (tests/test_multihost_data.py), not a test.

    python multihost_files.py PROCESS_ID NUM_PROCESSES PORT PARQUET_DIR OUT_DIR BATCHES MODE

Joins `jax.distributed`, records every parquet file this process opens (pyarrow's readers
wrapped; `datasets.load_dataset` refused), and reads BATCHES batches of 4 examples of this
host's share. MODE `save`: writes the state after the last batch, prints "saved" and waits to
be killed (`kill -9`); MODE `restore`: starts from the saved state. Writes the batches' ids and
the opened files to OUT_DIR/run-MODE-PROCESS_ID.json.
"""

import json
import os
import sys

import jax

BLOCK = 4


def record_opened_files(opened: list[str]) -> None:
    """Wraps pyarrow's parquet readers to record the files they open; refuses `datasets`."""
    import datasets
    import pyarrow.parquet as pq

    class RecordingParquetFile(pq.ParquetFile):
        def __init__(self, source, *args, **kwargs):
            opened.append(os.path.basename(str(source)))
            super().__init__(source, *args, **kwargs)

    def recording(read):
        def wrapper(source, *args, **kwargs):
            opened.append(os.path.basename(str(source)))
            return read(source, *args, **kwargs)

        return wrapper

    pq.ParquetFile = RecordingParquetFile
    for name in ("read_table", "read_metadata", "read_schema"):
        setattr(pq, name, recording(getattr(pq, name)))

    def refuse(*args, **kwargs):
        raise AssertionError("datasets.load_dataset would read the whole corpus")

    datasets.load_dataset = refuse


def main(process_id, num_processes, port, folder, out_dir, batches, mode):
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=int(num_processes),
        process_id=int(process_id),
    )
    from flax_distil.data import ExampleStream, Source, SourceSpec

    opened = []
    record_opened_files(opened)
    stream = ExampleStream(
        [Source(SourceSpec("parquet", folder, shuffle_buffer=4))],
        seed=7,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        block_size=BLOCK,
    )
    state_file = os.path.join(out_dir, f"state-{process_id}.json")
    if mode == "restore":
        with open(state_file) as handle:
            stream.restore(json.load(handle))
    ids = [[next(stream).id for _ in range(BLOCK)] for _ in range(int(batches))]
    with open(os.path.join(out_dir, f"run-{mode}-{process_id}.json"), "w") as handle:
        json.dump({"ids": ids, "opened": opened}, handle)
    if mode == "save":
        with open(state_file + ".tmp", "w") as handle:
            json.dump(stream.state(), handle)
        os.replace(state_file + ".tmp", state_file)  # a checkpoint is whole or absent
        print("saved", flush=True)
        sys.stdin.readline()  # until killed
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
