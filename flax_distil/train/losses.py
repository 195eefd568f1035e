"""Distillation losses as masked sums: the caller divides once by the global token count.

Returning sums (not means) keeps the loss token-weighted over the whole global batch however it
is split into devices or microbatches: sum the pieces, then divide by the total of `loss_mask`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sum(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum over masked positions of -log p(label); logits [B,T,V], labels and mask [B,T]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    return -(picked * mask).sum()


def kl_sum(
    teacher_logits: jax.Array, student_logits: jax.Array, mask: jax.Array, temperature: float
) -> jax.Array:
    """Sum over masked positions of KL(teacher || student), both softened by `temperature`.

    Not multiplied by T^2: `distillation_sums` applies the weight."""
    teacher_log = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    student_log = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    teacher_probs = jnp.exp(teacher_log)
    per_token = (teacher_probs * (teacher_log - student_log)).sum(axis=-1)
    return (per_token * mask).sum()


def distillation_sums(
    student_logits, teacher_logits, labels, mask, *, ce_weight, kl_weight, temperature
) -> dict[str, jax.Array]:
    """{'objective', 'ce', 'kl'} sums: objective = ce_weight * CE + kl_weight * T^2 * KL."""
    ce = cross_entropy_sum(student_logits, labels, mask)
    kl = kl_sum(teacher_logits, student_logits, mask, temperature) if kl_weight else ce * 0.0
    objective = ce_weight * ce + kl_weight * temperature**2 * kl
    return {"objective": objective, "ce": ce, "kl": kl}
