"""One training run for the trainer's equivalence tests (tests/train/test_loop.py); not a test.

    python train_worker.py DEVICES WORKDIR [key=value ...] [--process ID NUM PORT]
        [--dry-run OUT.json]

Sets the CPU device count before jax starts, joins `jax.distributed` when asked, and trains;
the test reads the run's metrics.jsonl and exported student. With --dry-run it compiles the
step only and writes what `train(dry_run=True)` returns.
"""

import os
import sys


def main(argv):
    devices, workdir, *rest = argv
    process = dry_run = None
    if "--dry-run" in rest:
        at = rest.index("--dry-run")
        dry_run, rest = rest[at + 1], rest[:at] + rest[at + 2 :]
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

    result = train(load_config(None, rest), workdir, dry_run=dry_run is not None)
    if dry_run is not None:
        import json
        from pathlib import Path

        Path(dry_run).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
