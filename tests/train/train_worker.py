"""One training run for the trainer's equivalence tests (tests/train/test_loop.py); not a test.

    python train_worker.py DEVICES WORKDIR [key=value ...] [--process ID NUM PORT]

Sets the CPU device count before jax starts, joins `jax.distributed` when asked, and trains;
the test reads the run's metrics.jsonl and exported student.
"""

import os
import sys


def main(argv):
    devices, workdir, *rest = argv
    process = None
    if "--process" in rest:
        at = rest.index("--process")
        process, rest = rest[at + 1 : at + 4], rest[:at]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    import jax

    if process is not None:
        process_id, num_processes, port = map(int, process)
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=num_processes,
            process_id=process_id,
        )
    from flax_distil.train import load_config, train

    train(load_config(None, rest), workdir)


if __name__ == "__main__":
    main(sys.argv[1:])
