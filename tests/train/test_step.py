"""The compiled train step: compiles once and learns, frozen parts, accumulation, dropout.

The step runs on the run's first batch, built by `flax_distil.train.run` as training builds it.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import tree_leaves_with_path

from flax_distil import parallel
from flax_distil.train import load_config
from flax_distil.train.optimizer import make_optimizer
from flax_distil.train.run import STEP_INPUTS, build_run, sharded_state, train_batches
from flax_distil.train.step import jit_train_step, optimizer_state_bytes

from .conftest import assert_relative, settings


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
    # Teacher forcing writes no KV cache: no scatter into [B, H, L, Dh] buffers anywhere in the
    # step (the embedding gradients' scatter-adds into [V, D] tables are the only scatters).
    hlo = step.lower(state, run.models.frozen, fixed_batch(run)).compile().as_text()
    scatters = re.findall(r"= (\w+\[[\d,]*\])[^=]*? scatter\(", hlo)
    assert all(shape.count(",") < 3 for shape in scatters), scatters
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


def first_step_metrics(teacher, corpus, workdir, **extra) -> dict:
    """The first step's metrics in a run built from scratch: its own models, state and step."""
    config = load_config(None, settings(teacher, corpus, **extra))
    run = build_run(config, workdir)
    optimizer, schedule = make_optimizer(config.train)
    state, _ = sharded_state(run, optimizer)
    batch = fixed_batch(run)
    step = jit_train_step(run.models, run.settings, optimizer, schedule, run.mesh, state, batch)
    return step(state, run.models.frozen, batch)[1]


def first_step_loss(teacher, corpus, workdir, **extra) -> float:
    return float(first_step_metrics(teacher, corpus, workdir, **extra)["loss"])


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

    # A run built again from scratch (its own models, state and compiled step) with the same
    # train.seed drops the same units, and train.seed is the seed the step uses.
    dropout = {"model.dropout": 0.3}
    assert first_step_loss(tiny_teacher, corpus, tmp_path / "again", **dropout) == first_loss(0)
    seed_one = {**dropout, "train.seed": 1}
    assert first_step_loss(tiny_teacher, corpus, tmp_path / "seed1", **seed_one) == first_loss(1)
    assert first_loss(0) != first_loss(1)
    assert no_dropout not in (first_loss(0), first_loss(1))  # eval runs without dropout
    # ... and equals the first step's loss of a run without dropout
    assert first_step_loss(tiny_teacher, corpus, tmp_path / "off") == pytest.approx(no_dropout)


def test_bfloat16_steps_store_frozen_weights_once_in_bfloat16(tiny_teacher, corpus, tmp_path):
    overrides = {"model.compute_dtype": "bfloat16", "model.freeze_token_embeddings": True}
    config = load_config(None, settings(tiny_teacher, corpus, **overrides))
    run = build_run(config, tmp_path)
    optimizer, schedule = make_optimizer(config.train)
    state, _ = sharded_state(run, optimizer)
    assert set(run.models.frozen) == {"encoder", "student_embedding", "teacher"}
    frozen = jax.tree.leaves(run.models.frozen)
    assert {leaf.dtype for leaf in frozen} == {jnp.dtype(jnp.bfloat16)}  # no float32 copy
    master = jax.tree.leaves(state["params"]) + jax.tree.leaves(state["opt_state"])
    assert {leaf.dtype for leaf in master if leaf.ndim} == {jnp.dtype(jnp.float32)}
    state, losses, _ = steps_on_one_batch(run, optimizer, schedule, state, 3)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
