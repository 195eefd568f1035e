"""Training operations on real clusters: preemption checks without per-step collectives, `gs://`
paths reaching orbax, the compilation cache's directory, best-WER retention.

Multi-process behaviour (MFU, export under fsdp over hosts, a failing host, the compilation
cache across reruns) is tested with real processes in test_loop.py.
"""

import os
import signal
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from orbax.checkpoint.options import AtomicityMode

from flax_distil.train import checkpoints, loop
from flax_distil.train.compilation_cache import cache_directory
from flax_distil.train.config import CheckpointConfig


@pytest.fixture
def preemption_of():
    made = []

    def make(**kwargs):
        made.append(loop.Preemption(**kwargs))
        return made[-1]

    yield make
    for preemption in reversed(made):
        preemption.restore()


def test_hosts_agree_on_sigterm_every_n_steps_not_every_step(preemption_of, monkeypatch):
    gathered = []

    def allgather(flag):  # this host's flag beside another host's, never signalled
        gathered.append(bool(flag))
        return np.asarray([flag, False])

    monkeypatch.setattr(loop.parallel, "allgather", allgather)
    preemption = preemption_of(check_every=10, process_count=2)
    assert not any(preemption.agreed(step) for step in range(1, 101))
    assert gathered == [False] * 10  # one collective per 10 steps
    os.kill(os.getpid(), signal.SIGTERM)
    stops = [preemption.agreed(step) for step in range(101, 111)]
    assert stops == [False] * 9 + [True]  # every host stops at the same step, the 110th
    assert gathered[-1] is True and len(gathered) == 11


def test_a_single_process_stops_at_the_next_step_without_collectives(preemption_of, monkeypatch):
    def allgather(flag):
        raise AssertionError("a single process needs no collective")

    monkeypatch.setattr(loop.parallel, "allgather", allgather)
    preemption = preemption_of(check_every=10)
    assert not preemption.agreed(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.agreed(2)


def test_a_gs_workdir_reaches_orbax_intact(monkeypatch, tmp_path):
    seen = {}

    class Manager:  # stands in for orbax's CheckpointManager: nothing touches the network
        def __init__(self, directory, options=None):
            seen.update(directory=directory, options=options)

    monkeypatch.setattr(checkpoints.ocp, "CheckpointManager", Manager)
    checkpoints.Checkpointer("gs://bucket/run", CheckpointConfig(atomicity="commit_file"))
    assert isinstance(seen["directory"], epath.Path)
    assert os.fspath(seen["directory"]) == "gs://bucket/run/checkpoints"
    assert seen["options"].atomicity_options.mode == AtomicityMode.COMMIT_FILE

    monkeypatch.chdir(tmp_path)
    checkpoints.Checkpointer("runs/a", CheckpointConfig())
    assert os.fspath(seen["directory"]) == str(tmp_path / "runs" / "a" / "checkpoints")
    assert seen["options"].atomicity_options.mode == AtomicityMode.AUTO


def test_the_compilation_cache_lives_under_the_workdir_unless_absolute():
    workdir = epath.Path("gs://bucket/run")
    assert cache_directory("compilation_cache", workdir) == "gs://bucket/run/compilation_cache"
    assert cache_directory("/cache/jax", workdir) == "/cache/jax"
    assert cache_directory("gs://shared/cache", workdir) == "gs://shared/cache"
    assert cache_directory(None, workdir) is None


def test_only_an_eval_of_the_saved_step_ranks_its_checkpoint():
    saved = []
    fake = object.__new__(loop.Loop)  # just what `_save` reads
    fake.state, fake.batches = {}, SimpleNamespace(state=dict)
    fake.checkpointer = SimpleNamespace(
        save=lambda step, state, data, eval_wer=None: saved.append((step, eval_wer))
    )
    fake.last_eval, fake.last_eval_step = {"a": {"wer": 0.2}, "b": {"wer": 0.4}}, 100
    fake._save(100)  # evaluated at this step
    fake._save(105)  # a SIGTERM save five steps later: not evaluated
    assert saved == [(100, pytest.approx(0.3)), (105, None)]


def test_best_checkpoint_retention_ignores_unevaluated_saves(tmp_path):
    config = CheckpointConfig(keep=1, keep_best=True, async_save=False)
    checkpointer = checkpoints.Checkpointer(tmp_path, config)
    state = {"x": jnp.zeros(3)}
    for step, wer in [(10, 0.3), (20, 0.1), (25, None), (30, 0.2), (35, None)]:
        checkpointer.save(step, state, {"position": step}, eval_wer=wer)
    checkpointer.close()
    # the best evaluated (20) and the newest (35); the unevaluated 25 was never "best"
    assert sorted(checkpointer.manager.all_steps()) == [20, 35]
