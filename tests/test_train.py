"""The trainer: compiled step, device/host equivalence, accumulation, exact resume, NaN, logs.

A tiny random teacher (d_model 64, tiny.en's tokenizer) distils into a 2-layer student on the
20-clip corpus. Runs with several devices or processes train in subprocesses
(tests/train_worker.py, and the CLI for kill/restart), since the CPU device count is fixed
when jax starts.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import tree_leaves_with_path
from safetensors.numpy import load_file

from flax_distil import parallel
from flax_distil.errors import FlaxDistilError
from flax_distil.train import export_from_workdir, load_config, train
from flax_distil.train.metric_writer import read_metrics
from flax_distil.train.optimizer import make_optimizer
from flax_distil.train.run import STEP_INPUTS, build_run, sharded_state, train_batches
from flax_distil.train.step import jit_train_step, optimizer_state_bytes

from .conftest import small_whisper

WORKER = Path(__file__).parent / "train_worker.py"


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A random Whisper with d_model 64 and 4 decoder layers, saved with tiny.en's tokenizer."""
    directory = tmp_path_factory.mktemp("teacher")
    return small_whisper(directory, encoder_layers=2, decoder_layers=4, heads=4)


def settings(teacher, corpus, **extra) -> list[str]:
    folder, _ = corpus
    values = {
        "model.teacher": str(teacher),
        "data.train": f"[{{kind: audiofolder, path: {folder}}}]",
        "data.max_label_length": 16,
        "train.batch_size": 8,
        "train.num_steps": 10,
        "train.warmup_steps": 2,
        "train.learning_rate": 1e-3,
        "checkpoint.every": 1000,
        "log.every": 1,
        "log.peak_flops": 1e11,
        "eval.every": 0,
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


def fixed_batch(run):
    batches = train_batches(run)
    batch = next(batches)
    return parallel.global_batch(run.mesh, {k: v for k, v in batch.items() if k in STEP_INPUTS})


def steps_on_one_batch(run, optimizer, schedule, state, count):
    """`count` compiled train steps on the run's first batch: (state, losses, step)."""
    batch = fixed_batch(run)
    step = jit_train_step(run.models, run.settings, optimizer, schedule, run.mesh, state, batch)
    losses = []
    for _ in range(count):
        state, metrics = step(state, run.models.frozen, batch)
        losses.append(float(metrics["loss"]))
    return state, losses, step


def copy_tree(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def test_step_compiles_once_and_learns_with_frozen_parts_unchanged(tiny_teacher, corpus, tmp_path):
    config = load_config(None, settings(tiny_teacher, corpus, **{"train.num_steps": 20}))
    run = build_run(config, tmp_path)
    optimizer, schedule = make_optimizer(config.train)
    state, _ = sharded_state(run, optimizer)
    trainable = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state["params"]))
    assert optimizer_state_bytes(state["opt_state"]) == 2 * trainable  # AdamW moments only
    assert "encoder" not in state["params"] and "encoder" in run.models.frozen
    frozen_before = copy_tree(run.models.frozen)
    state, losses, step = steps_on_one_batch(run, optimizer, schedule, state, 20)
    assert step._cache_size() == 1
    assert losses[-1] < 0.6 * losses[0], losses
    for before, after in zip(
        jax.tree.leaves(frozen_before), jax.tree.leaves(run.models.frozen), strict=True
    ):
        np.testing.assert_array_equal(before, np.asarray(after))


def test_frozen_token_embedding_gets_no_gradient_and_no_optimiser_state(
    tiny_teacher, corpus, tmp_path
):
    overrides = settings(tiny_teacher, corpus, **{"model.freeze_token_embeddings": "true"})
    config = load_config(None, overrides)
    run = build_run(config, tmp_path)
    optimizer, schedule = make_optimizer(config.train)
    state, _ = sharded_state(run, optimizer)
    paths = [jax.tree_util.keystr(path) for path, _ in tree_leaves_with_path(state["params"])]
    assert paths and not any("embed_tokens" in path for path in paths)
    trainable = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state["params"]))
    assert optimizer_state_bytes(state["opt_state"]) == 2 * trainable
    embedding = np.array(run.models.student().decoder.embed_tokens.embedding[...])
    layer_before = copy_tree(state["params"])
    state, losses, _ = steps_on_one_batch(run, optimizer, schedule, state, 8)
    assert losses[-1] < 0.8 * losses[0], losses
    student = run.models.student(state["params"])  # what export writes
    np.testing.assert_array_equal(student.decoder.embed_tokens.embedding[...], embedding)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(layer_before), jax.tree.leaves(state["params"]), strict=True
        )
    ]
    assert all(changed)  # every trainable tensor moved


def test_gradient_accumulation_equals_one_big_batch(tiny_teacher, corpus, tmp_path):
    outcomes = []
    for microbatches in (1, 4):
        config = load_config(
            None,
            settings(tiny_teacher, corpus, **{"train.microbatches": microbatches}),
        )
        run = build_run(config, tmp_path)
        optimizer, schedule = make_optimizer(config.train)
        state, _ = sharded_state(run, optimizer)
        batch = fixed_batch(run)
        step = jit_train_step(run.models, run.settings, optimizer, schedule, run.mesh, state, batch)
        for _ in range(2):  # the second step runs at a non-zero learning rate
            state, metrics = step(state, run.models.frozen, batch)
        outcomes.append((float(metrics["loss"]), copy_tree(state["params"])))
    (loss_one, params_one), (loss_four, params_four) = outcomes
    assert loss_four == pytest.approx(loss_one, rel=1e-5)
    for a, b in zip(jax.tree.leaves(params_one), jax.tree.leaves(params_four), strict=True):
        assert_relative(a, b)


def assert_relative(actual, expected, tolerance=1e-5):
    """||actual - expected|| <= tolerance * ||expected|| (Frobenius norms, per tensor)."""
    difference = np.linalg.norm(np.asarray(actual, np.float64) - expected)
    assert difference <= tolerance * np.linalg.norm(np.asarray(expected, np.float64)), difference


def worker(devices, workdir, overrides, process=None, wait=True):
    command = [sys.executable, str(WORKER), str(devices), str(workdir), *overrides]
    if process is not None:
        command += ["--process", *map(str, process)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    return proc


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


def test_two_processes_match_one_process_with_two_devices(tiny_teacher, corpus, tmp_path):
    overrides = settings(tiny_teacher, corpus, **{"data.label_bucket": 1})  # hosts agree
    worker(2, tmp_path / "single", overrides)
    port = random.Random(os.getpid()).randrange(20000, 40000)
    procs = [
        worker(1, tmp_path / "multi", overrides, process=(index, 2, port), wait=False)
        for index in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-3000:]
    assert_same_run(tmp_path / "multi", tmp_path / "single")


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
    assert_same_run(tmp_path / "b", tmp_path / "a", tolerance=0.0)  # bitwise on CPU


def test_nan_stops_with_last_good_checkpoint_restorable(
    tiny_teacher, corpus, tmp_path, monkeypatch
):
    from flax_distil.train import loop

    real_global_batch = loop.parallel.global_batch
    calls = {"n": 0}

    def poisoned(mesh, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # the fifth step's audio is NaN
            batch = {**batch, "audio": np.full_like(batch["audio"], np.nan)}
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


def test_tensorboard_has_train_and_eval_scalars(tiny_teacher, corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, _ = corpus
    eval_set = f"[{{kind: audiofolder, path: {folder}, name: clips}}]"
    extra = {"data.eval": eval_set, "eval.every": 2, "eval.max_examples": 4}
    extra.update({"eval.max_new_tokens": 4, "train.num_steps": 4})
    result = train(load_config(None, settings(tiny_teacher, corpus, **extra)), tmp_path)
    assert set(result["eval"]["clips"]) == {"loss", "ce", "kl", "wer"}
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in (
        "loss",
        "ce",
        "kl",
        "learning_rate",
        "grad_norm",
        "param_norm",
        "tokens_per_second",
        "samples_per_second",
        "step_time",
        "mfu",
    ):
        assert f"train/{name}" in tags, name
    assert "eval/clips/wer" in tags
    assert [e.step for e in events.Scalars("eval/clips/wer")] == [0, 2, 4]
    assert len(events.Scalars("train/loss")) == 4
    assert any("samples/clips" in tag for tag in events.Tags()["tensors"])


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


def test_dropout_is_seeded_and_off_in_eval(tiny_teacher, corpus, tmp_path):
    from flax_distil.train.step import jit_eval_step

    config = load_config(None, settings(tiny_teacher, corpus, **{"model.dropout": 0.3}))
    run = build_run(config, tmp_path)
    optimizer, schedule = make_optimizer(config.train)
    state, _ = sharded_state(run, optimizer)
    batch = fixed_batch(run)
    step = jit_train_step(run.models, run.settings, optimizer, schedule, run.mesh, state, batch)
    sums = jit_eval_step(run.models, run.settings, run.mesh, batch)(
        state["params"], run.models.frozen, batch
    )
    no_dropout = float(sums["objective"] / sums["tokens"])

    def first_loss(seed):
        fresh = jax.tree.map(jnp.copy, state)
        fresh["rng"] = jax.random.PRNGKey(seed)
        return float(step(fresh, run.models.frozen, batch)[1]["loss"])

    assert first_loss(0) == first_loss(0)  # the same seed drops the same units
    assert first_loss(0) != first_loss(1)
    assert no_dropout not in (first_loss(0), first_loss(1))  # eval runs without dropout


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
