"""SpecAugment: reproducible masks of the expected size, the same input for teacher and student,
never in evaluation."""

import jax
import jax.numpy as jnp
import numpy as np

from flax_distil.train import load_config
from flax_distil.train.augment import SpecAugment, masks, spec_augment
from flax_distil.train.optimizer import make_optimizer
from flax_distil.train.run import build_run, sharded_state
from flax_distil.train.step import eval_sums, jit_train_step

from .conftest import settings
from .test_step import first_step_metrics, fixed_batch

SHAPE = (4, 80, 3000)


def test_masks_are_reproducible_and_sized_like_transformers():
    settings_ = SpecAugment(enabled=True, feature_mask_prob=0.1, min_feature_masks=1)
    time, feature = masks(jax.random.PRNGKey(3), SHAPE, settings_)
    again_time, again_feature = masks(jax.random.PRNGKey(3), SHAPE, settings_)
    assert np.array_equal(time, again_time) and np.array_equal(feature, again_feature)
    other, _ = masks(jax.random.PRNGKey(4), SHAPE, settings_)
    assert not np.array_equal(time, other)
    # 15 spans of 10 frames per row (0.05 * 3000 / 10), overlaps allowed; 1 span of 10 bins
    per_row = np.asarray(time).sum(axis=1)
    assert ((per_row >= 10) & (per_row <= 150)).all() and per_row.mean() > 100
    assert (np.asarray(feature).sum(axis=1) == 10).all()
    features = jnp.ones(SHAPE)
    masked = np.asarray(spec_augment(features, jax.random.PRNGKey(3), settings_))
    expected = ~(np.asarray(time)[:, None, :] | np.asarray(feature)[:, :, None])
    np.testing.assert_array_equal(masked, expected.astype(np.float32))


def test_training_steps_mask_and_evaluation_does_not(tiny_teacher, corpus, tmp_path):
    def first_loss_and_eval(augment: bool):
        overrides = {"data.spec_augment": f"{{enabled: {str(augment).lower()}}}"}
        config = load_config(None, settings(tiny_teacher, corpus, **overrides))
        run = build_run(config, tmp_path)
        optimizer, schedule = make_optimizer(config.train)
        state, _ = sharded_state(run, optimizer)
        batch = fixed_batch(run)
        evaluated = eval_sums(
            run.models.graphs, run.settings, state["params"], run.models.frozen, batch
        )
        step = jit_train_step(run.models, run.settings, optimizer, schedule, run.mesh, state, batch)
        _, metrics = step(state, run.models.frozen, batch)
        return float(metrics["loss"]), float(evaluated["objective"])

    plain_loss, plain_eval = first_loss_and_eval(False)
    masked_loss, masked_eval = first_loss_and_eval(True)
    again_loss, _ = first_loss_and_eval(True)
    assert masked_loss != plain_loss  # the step's input is masked ...
    assert again_loss == masked_loss  # ... the same way for the same seed and step
    assert masked_eval == plain_eval  # evaluation is never masked


def test_teacher_and_student_read_the_same_masked_input(tiny_teacher, corpus, tmp_path):
    # A student that keeps all of the teacher's decoder layers is the teacher: its KL is 0
    # exactly when both decoders cross-attend to one encoder output of one masked input.
    overrides = {"data.spec_augment": "{enabled: true}", "model.student_decoder_layers": 4}
    metrics = first_step_metrics(tiny_teacher, corpus, tmp_path, **overrides)
    assert float(metrics["ce"]) > 1.0  # a random teacher: the labels are far from its guesses
    assert abs(float(metrics["kl"])) < 1e-6
