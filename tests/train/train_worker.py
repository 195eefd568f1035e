"""One training run for the trainer's multi-device and multi-process tests; not a test.

    python train_worker.py DEVICES WORKDIR [key=value ...] [--process ID NUM PORT]
        [--dry-run OUT.json]

Sets the CPU device count before jax starts, joins `jax.distributed` when asked, and trains;
the test reads the run's metrics.jsonl and exported student. With --dry-run it compiles the
step only and writes what `train(dry_run=True)` returns. Test hooks, from the environment:
WORKER_MATMUL_FLOPS=F makes the measured per-device peak F FLOP/s; WORKER_FAIL_AT=P:S makes
process P raise at its step S.
"""

import os
import sys


def install_hooks() -> None:
    import jax

    from flax_distil.train import flops, loop

    if "WORKER_MATMUL_FLOPS" in os.environ:
        peak = float(os.environ["WORKER_MATMUL_FLOPS"])
        flops.matmul_flops_per_second = lambda **kwargs: peak
    if "WORKER_FAIL_AT" in os.environ:
        process, step = map(int, os.environ["WORKER_FAIL_AT"].split(":"))
        real_global_batch, calls = loop.parallel.global_batch, {"n": 0}

        def failing(mesh, batch):
            calls["n"] += 1
            if jax.process_index() == process and calls["n"] == step:
                raise RuntimeError(f"injected failure at step {step}")
            return real_global_batch(mesh, batch)

        loop.parallel.global_batch = failing


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

    install_hooks()
    result = train(load_config(None, rest), workdir, dry_run=dry_run is not None)
    if dry_run is not None:
        import json
        from pathlib import Path

        Path(dry_run).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
