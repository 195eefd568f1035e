"""AdamW with warmup + decay, global-norm clipping and no weight decay on biases and norms."""

from __future__ import annotations

import jax
import optax

from flax_distil.train.config import TrainConfig


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warmup to the peak rate, then linear or cosine decay to 0 at the last step
    (or constant). Counts optimiser steps: microbatches do not stretch it."""
    warmup = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
    decay_steps = max(config.num_steps - config.warmup_steps, 1)
    if config.schedule == "linear":
        decay = optax.linear_schedule(config.learning_rate, 0.0, decay_steps)
    elif config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(config.learning_rate, decay_steps)
    else:
        decay = optax.constant_schedule(config.learning_rate)
    if config.warmup_steps == 0:
        return decay
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def decay_mask(params):
    """Weight decay on matrices (kernels, embeddings) only; not on biases or norm parameters."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def make_optimizer(config: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(config)
    adamw = optax.adamw(
        schedule,
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        mask=decay_mask,
    )
    if config.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw), schedule
    return adamw, schedule
