"""The training loop: device/host equivalence, exact resume, NaN, dry run, reruns, the cache.

Runs with several devices or processes train in subprocesses (tests/train/train_worker.py, and
the CLI for kill/restart), since the CPU device count is fixed when jax starts.
"""

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from flax_distil.errors import FlaxDistilError
from flax_distil.train import export_from_workdir, load_config, train
from flax_distil.train.metric_writer import read_metrics

from ..conftest import checkout_env, free_port
from .conftest import assert_relative, settings

WORKER = Path(__file__).parent / "train_worker.py"


def worker(devices, workdir, overrides, process=None, wait=True, **env):
    """Runs train_worker.py (env: its test hooks); returns the process, or with `wait` its
    output once it succeeded."""
    command = [sys.executable, str(WORKER), str(devices), str(workdir), *overrides]
    if process is not None:
        command += ["--process", *map(str, process)]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=checkout_env(**env),
    )
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    return output


def outcome(workdir):
    losses = [record["loss"] for record in read_metrics(workdir)]
    return losses, load_file(str(Path(workdir) / "student" / "model.safetensors"))


def assert_same_run(run, reference, tolerance=1e-5):
    losses, params = outcome(run)
    reference_losses, reference_params = outcome(reference)
    assert len(losses) == len(reference_losses) > 0
    np.testing.assert_allclose(losses, reference_losses, rtol=tolerance)
    assert params.keys() == reference_params.keys()
    for name, value in params.items():
        assert_relative(value, reference_params[name], tolerance)


def test_eight_devices_and_fsdp_match_one_device(tiny_teacher, corpus, tmp_path):
    overrides = settings(tiny_teacher, corpus)
    worker(1, tmp_path / "one", overrides)
    worker(8, tmp_path / "data8", [*overrides, "mesh.data=8"])
    worker(8, tmp_path / "fsdp", [*overrides, "mesh.data=4", "mesh.fsdp=2"])
    assert_same_run(tmp_path / "data8", tmp_path / "one")
    assert_same_run(tmp_path / "fsdp", tmp_path / "one")


def flops_over_peak(workdir):
    """MFU x step time of every logged step: the step's FLOPs over the job's peak, which the
    device split into processes must not change (wall-clock time cancels out)."""
    return [record["mfu"] * record["step_time"] for record in read_metrics(workdir)]


def test_two_processes_with_fsdp_over_both_match_one_process(tiny_teacher, corpus, tmp_path):
    """2 processes x 2 devices with fsdp=4 (frozen and trained weights split over both hosts):
    the losses, the exported student (gathered from both hosts) and the MFU of 1 process with
    4 devices (the per-device peak is "measured": a fixed stand-in value here); `export` on
    one single-device process writes the same student from the 2 hosts' checkpoint."""
    # A hub source (the corpus's parquet): one global order, so 2 hosts' batches are the single
    # process's batch (local sources are sharded by file: each host reads other rows).
    hub = f"[{{kind: hub, path: {corpus[1]}, text_column: sentence}}]"
    overrides = settings(
        tiny_teacher,
        corpus,
        **{"data.label_bucket": 1, "mesh.data": 1, "mesh.fsdp": 4, "log.peak_flops": 0},
        **{"data.train": hub},
    )
    peak = {"WORKER_MATMUL_FLOPS": "1e9"}
    worker(4, tmp_path / "single", overrides, **peak)
    port = free_port()
    procs = [
        worker(2, tmp_path / "multi", overrides, process=(index, 2, port), wait=False, **peak)
        for index in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-3000:]
    assert_same_run(tmp_path / "multi", tmp_path / "single")
    np.testing.assert_allclose(
        flops_over_peak(tmp_path / "multi"), flops_over_peak(tmp_path / "single"), rtol=1e-9
    )
    # `export` on this one process (one device) reads the 2 hosts' fsdp=4 checkpoint
    assert export_from_workdir(tmp_path / "multi", tmp_path / "exported") == 10
    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    _, trained = outcome(tmp_path / "multi")
    assert exported.keys() == trained.keys()
    for name, value in trained.items():
        np.testing.assert_array_equal(exported[name], value)


def test_a_failing_process_ends_every_process_promptly(tiny_teacher, corpus, tmp_path):
    overrides = settings(tiny_teacher, corpus, **{"data.label_bucket": 1})
    port = free_port()
    procs = [
        worker(1, tmp_path, overrides, process=(index, 2, port), wait=False, WORKER_FAIL_AT="1:1")
        for index in range(2)
    ]
    try:
        failing_output, _ = procs[1].communicate(timeout=300)  # start-up, then step 1 fails
        failed_at = time.perf_counter()
        healthy_output, _ = procs[0].communicate(timeout=60)
    finally:
        for proc in procs:
            proc.kill()
    last_line = healthy_output.strip().splitlines()[-1]
    print(f"process 0 exited {time.perf_counter() - failed_at:.1f} s after process 1: {last_line}")
    assert procs[1].returncode != 0 and "injected failure at step 1" in failing_output
    assert procs[0].returncode != 0, healthy_output[-3000:]


def cli_train(workdir, overrides):
    command = [sys.executable, "-m", "flax_distil", "train", "--workdir", str(workdir), *overrides]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(proc, workdir, step):
    metrics = Path(workdir) / "metrics.jsonl"
    while proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= step:
            return
        time.sleep(0.05)
    pytest.fail(f"training ended before step {step}: {proc.communicate()[0][-2000:]}")


def test_sigterm_and_kill_then_rerun_equal_an_uninterrupted_run(tiny_teacher, corpus, tmp_path):
    overrides = settings(
        tiny_teacher,
        corpus,
        **{"train.num_steps": 60, "train.batch_size": 2, "checkpoint.every": 5},
        **{"data.label_bucket": 4, "data.length_groups": 3},  # resumes inside a length group
    )
    uninterrupted = cli_train(tmp_path / "a", overrides)
    assert uninterrupted.wait(timeout=600) == 0, uninterrupted.communicate()[0][-3000:]

    term_at, kill_at = 12, random.Random().randrange(25, 55)
    print(f"SIGTERM at step {term_at}, SIGKILL at step {kill_at}")
    proc = cli_train(tmp_path / "b", overrides)
    wait_for_step(proc, tmp_path / "b", term_at)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "preempted" in output, output[-2000:]
    saved = sorted(
        int(p.name) for p in (tmp_path / "b" / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert saved and term_at <= saved[-1] < 60  # the checkpoint written on SIGTERM

    proc = cli_train(tmp_path / "b", overrides)
    wait_for_step(proc, tmp_path / "b", kill_at)
    proc.kill()
    proc.wait()
    proc = cli_train(tmp_path / "b", overrides)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    assert "resumed from step" in output
    # the step compiled by the earlier runs in this workdir is read back, not recompiled
    reused = re.search(r"compilation cache: (\d+) programs reused", output)
    assert reused and int(reused.group(1)) > 0, output[-3000:]
    assert any((tmp_path / "b" / "compilation_cache").iterdir())
    assert_same_run(tmp_path / "b", tmp_path / "a", tolerance=0.0)  # bitwise on CPU


def test_nan_stops_with_last_good_checkpoint_restorable(
    tiny_teacher, corpus, tmp_path, monkeypatch
):
    from flax_distil.train import loop

    real_global_batch = loop.parallel.global_batch
    calls = {"n": 0}

    def poisoned(mesh, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # the fifth step's loss mask is NaN (its audio is int16 PCM)
            batch = {**batch, "loss_mask": np.full_like(batch["loss_mask"], np.nan)}
        return real_global_batch(mesh, batch)

    monkeypatch.setattr(loop.parallel, "global_batch", poisoned)
    config = load_config(None, settings(tiny_teacher, corpus, **{"checkpoint.every": 2}))
    with pytest.raises(FlaxDistilError, match="step 5: the loss or gradient is not finite"):
        train(config, tmp_path / "stop")
    assert export_from_workdir(tmp_path / "stop", tmp_path / "exported") == 4
    assert (tmp_path / "exported" / "model.safetensors").exists()

    calls["n"] = 0
    skip = load_config(None, settings(tiny_teacher, corpus, **{"train.on_nan": "skip"}))
    result = train(skip, tmp_path / "skip")
    assert result["finished"] and np.isfinite(result["train"]["loss"])
    assert read_metrics(tmp_path / "skip")[-1]["skipped_steps"] == 1


def test_dry_run_reports_parameters_and_memory(tiny_teacher, corpus, tmp_path, capsys):
    train(load_config(None, settings(tiny_teacher, corpus)), tmp_path, dry_run=True)
    report = capsys.readouterr().out
    assert "student trainable parameters:" in report and "per-device memory" in report
    assert not (tmp_path / "metrics.jsonl").exists()


def test_rerun_with_a_different_model_is_refused(tiny_teacher, corpus, tmp_path):
    train(load_config(None, settings(tiny_teacher, corpus, **{"train.num_steps": 1})), tmp_path)
    changed = settings(tiny_teacher, corpus, **{"model.student_decoder_layers": 1})
    with pytest.raises(FlaxDistilError, match=r"different model\.student_decoder_layers"):
        train(load_config(None, changed), tmp_path)


def test_cached_encoder_outputs_train_like_the_encoder(tiny_teacher, corpus, tmp_path, monkeypatch):
    from flax_distil.train import encoder_cache

    caches = []
    real_init = encoder_cache.EncoderCache.__init__

    def remember(self, *args):
        real_init(self, *args)
        caches.append(self)

    monkeypatch.setattr(encoder_cache.EncoderCache, "__init__", remember)
    steps = {"train.num_steps": 6}
    train(load_config(None, settings(tiny_teacher, corpus, **steps)), tmp_path / "live")
    cached = {**steps, "data.cache_encoder_outputs": True}
    train(load_config(None, settings(tiny_teacher, corpus, **cached)), tmp_path / "cached")
    live = [r["loss"] for r in read_metrics(tmp_path / "live")]
    np.testing.assert_allclose(
        [r["loss"] for r in read_metrics(tmp_path / "cached")], live, rtol=1e-5
    )
    (cache,) = caches
    assert len(cache.store) <= 20 and cache.encoded < 6 * 8  # later epochs reuse outputs
