"""The distillation train step: one `jax.jit` with explicit shardings and a donated train state.

The student's frozen encoder runs once per (micro)batch and feeds both decoders; the teacher
(its decoder, and its own encoder only when the student's differs) is a separate, never donated
state used under `stop_gradient`. Gradients and AdamW moments exist for the trainable student
parameters only. Microbatches are a `lax.scan` inside the step, so the learning-rate schedule
counts optimiser steps. A step whose loss or gradient is not finite leaves the state unchanged
(the caller stops or skips, as configured).

    models = DistillModels.build(student, teacher, freeze_encoder=True)
    state = init_train_state(models, optimizer, seed)
    step = jit_train_step(models, settings, optimizer, schedule, mesh, state, batch.keys())
    state, metrics = step(state, models.frozen, batch)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from flax_distil.audio import log_mel
from flax_distil.errors import FlaxDistilError
from flax_distil.parallel import batch_sharding, replicated, state_shardings
from flax_distil.train.augment import SpecAugment, spec_augment
from flax_distil.train.losses import distillation_sums

SUMS = ("objective", "ce", "kl")
_SPEC_AUGMENT_KEY = 1 << 20  # folded into the step's key: a stream apart from dropout's


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static settings of the compiled step (hashable)."""

    ce_weight: float = 0.8
    kl_weight: float = 1.0
    temperature: float = 2.0
    microbatches: int = 1
    dropout: float = 0.0
    num_mel_bins: int = 80
    spec_augment: SpecAugment = dataclasses.field(default_factory=SpecAugment)


@dataclasses.dataclass
class DistillModels:
    """Graph definitions (static) and states of the student and teacher.

    `trainable` is the student's trainable parameters; `frozen` holds the student's frozen
    encoder ("encoder", when frozen) and token embedding ("student_embedding", when frozen: it
    is also the output projection), the teacher's decoder ("teacher") and the teacher's encoder
    ("teacher_encoder") only when the student's encoder differs from it."""

    student_def: nnx.GraphDef
    teacher_def: nnx.GraphDef
    trainable: nnx.State
    frozen: dict
    encoder_def: nnx.GraphDef  # the student's encoder alone (see `encoder_cache`)

    @classmethod
    def build(
        cls,
        student,
        teacher,
        *,
        freeze_encoder: bool = True,
        freeze_token_embeddings: bool = False,
        frozen_dtype=None,
        shared_encoder: bool | None = None,
    ) -> DistillModels:
        """`frozen_dtype` (e.g. bfloat16 compute): the frozen parts are stored once in it, not
        kept in float32 and cast every step; trainable parameters keep their dtype.
        `shared_encoder`: whether the student's frozen encoder is the teacher's (None: compare
        their weights). The models may be abstract (`nnx.eval_shape`) for planning."""
        s, t = student.config, teacher.config
        if (s.d_model, s.vocab_size) != (t.d_model, t.vocab_size):
            raise FlaxDistilError(
                "student and teacher must share d_model and vocabulary "
                f"(student {s.d_model}/{s.vocab_size}, teacher {t.d_model}/{t.vocab_size})"
            )
        decoder = nnx.PathContains("decoder")
        embedding = nnx.All(decoder, nnx.PathContains("embed_tokens"))
        train = nnx.All(decoder, nnx.Not(embedding)) if freeze_token_embeddings else decoder
        frozen = {}
        if freeze_encoder:  # (the embedding filter matches nothing when `train` has it)
            student_def, trainable, frozen_embedding, encoder = nnx.split(
                student, train, embedding, ...
            )
            frozen["encoder"] = encoder
        elif freeze_token_embeddings:
            student_def, frozen_embedding, trainable = nnx.split(student, embedding, ...)
        else:
            student_def, trainable = nnx.split(student)
        if freeze_token_embeddings:
            frozen["student_embedding"] = frozen_embedding
        teacher_def, teacher_decoder, teacher_encoder = nnx.split(teacher, decoder, ...)
        frozen["teacher"] = teacher_decoder
        if shared_encoder is None:
            shared_encoder = shares_encoder(student, teacher, freeze_encoder)
        if not shared_encoder:
            frozen["teacher_encoder"] = teacher_encoder
        encoder_def = nnx.graphdef(student.encoder)
        if frozen_dtype is not None:
            frozen = jax.tree.map(lambda x: _as_dtype(x, frozen_dtype), frozen)
        return cls(student_def, teacher_def, trainable, frozen, encoder_def)

    @property
    def graphs(self) -> tuple[nnx.GraphDef, nnx.GraphDef]:
        return self.student_def, self.teacher_def

    def student(self, trainable=None) -> nnx.Module:
        trainable = self.trainable if trainable is None else trainable
        return _student(self.student_def, trainable, self.frozen)


def _as_dtype(leaf, dtype):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape, dtype)
    return leaf.astype(dtype)


def shares_encoder(student, teacher, freeze_encoder: bool) -> bool:
    """The student's frozen encoder is the teacher's (same shapes, same weights)."""
    if not freeze_encoder or student.config.encoder_layers != teacher.config.encoder_layers:
        return False
    pairs = zip(
        jax.tree.leaves(nnx.state(student.encoder)),
        jax.tree.leaves(nnx.state(teacher.encoder)),
        strict=True,
    )
    # Compared in the teacher's dtype (a bfloat16 teacher shares a float32 student's encoder).
    return all(a.shape == b.shape and bool(jnp.array_equal(a.astype(b.dtype), b)) for a, b in pairs)


def student_frozen_parts(frozen: dict) -> list:
    """The student's frozen states (encoder, token embedding), those that exist."""
    return [frozen[key] for key in ("student_embedding", "encoder") if key in frozen]


def _student(student_def, trainable, frozen):
    return nnx.merge(student_def, trainable, *student_frozen_parts(frozen))


def _teacher(teacher_def, frozen):
    encoder = frozen.get("teacher_encoder", frozen.get("encoder"))
    return nnx.merge(teacher_def, frozen["teacher"], encoder)


def features_of(batch: dict, num_mel_bins: int) -> jax.Array:
    """Log-mel features: computed here (on the accelerator) from padded audio, or given."""
    if "features" in batch:
        return batch["features"]
    return log_mel(batch["audio"], num_mel_bins)


def _loss_sums(graphs, settings: StepSettings, trainable, frozen, batch, rng, training: bool):
    student_def, teacher_def = graphs
    student = _student(student_def, trainable, frozen)
    if "encoder_out" in batch:  # the frozen encoder's output, cached by the caller
        encoder_out, features = batch["encoder_out"], None
    else:
        features = features_of(batch, settings.num_mel_bins)
        if training and settings.spec_augment.enabled:  # one masked input for both models
            key = jax.random.fold_in(rng, _SPEC_AUGMENT_KEY)
            features = spec_augment(features, key, settings.spec_augment)
        encoder_out = student.encode(features)
    if "encoder" in frozen:
        encoder_out = jax.lax.stop_gradient(encoder_out)
    dropout = settings.dropout if training else 0.0
    tokens, labels, mask = batch["decoder_input_ids"], batch["labels"], batch["loss_mask"]
    student_logits = student.decode(tokens, encoder_out, dropout, rng)
    teacher_logits = None
    if settings.kl_weight:
        teacher = _teacher(teacher_def, frozen)
        teacher_in = encoder_out if "teacher_encoder" not in frozen else teacher.encode(features)
        teacher_logits = jax.lax.stop_gradient(
            teacher.decode(tokens, jax.lax.stop_gradient(teacher_in))
        )
    return distillation_sums(
        student_logits,
        teacher_logits,
        labels,
        mask,
        ce_weight=settings.ce_weight,
        kl_weight=settings.kl_weight,
        temperature=settings.temperature,
    )


def _microbatches(batch: dict, count: int) -> dict:
    """[count, B / count, ...] with microbatch j = rows j, j + count, ...: each device keeps
    its own rows (the batch is split over devices in contiguous blocks)."""

    def split(x):
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:])
        return jnp.moveaxis(x, 1, 0)

    return jax.tree.map(split, batch)


def train_step(graphs, settings: StepSettings, optimizer, schedule, state, frozen, batch):
    """One optimiser step over the global batch; returns (new state, metrics)."""
    total_tokens = jnp.maximum(batch["loss_mask"].sum(), 1.0)
    rng = jax.random.fold_in(state["rng"], state["step"])
    params = state["params"]

    def accumulate(carry, inputs):
        grads, sums = carry
        index, microbatch = inputs

        def objective(trainable):
            parts = _loss_sums(
                graphs,
                settings,
                trainable,
                frozen,
                microbatch,
                jax.random.fold_in(rng, index),
                True,
            )
            return parts["objective"] / total_tokens, parts

        (_, parts), micro_grads = jax.value_and_grad(objective, has_aux=True)(params)
        grads = jax.tree.map(jnp.add, grads, micro_grads)
        sums = {name: sums[name] + parts[name] for name in SUMS}
        return (grads, sums), None

    zero_sums = {name: jnp.zeros((), jnp.float32) for name in SUMS}
    inputs = (jnp.arange(settings.microbatches), _microbatches(batch, settings.microbatches))
    carry = (jax.tree.map(jnp.zeros_like, params), zero_sums)
    (grads, sums), _ = jax.lax.scan(accumulate, carry, inputs)

    updates, new_opt_state = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    loss = sums["objective"] / total_tokens
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def keep_if_finite(new, old):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    new_state = {
        "step": state["step"] + 1,
        "opt_step": state["opt_step"] + finite.astype(jnp.int32),
        "params": keep_if_finite(new_params, params),
        "opt_state": keep_if_finite(new_opt_state, state["opt_state"]),
        "rng": state["rng"],
    }
    metrics = {
        "loss": loss,
        "ce": sums["ce"] / total_tokens,
        "kl": sums["kl"] / total_tokens,
        "grad_norm": grad_norm,
        "param_norm": optax.tree.norm(new_state["params"]),
        "learning_rate": schedule(state["opt_step"]),
        "tokens": total_tokens,
        "finite": finite,
    }
    return new_state, metrics


def eval_sums(graphs, settings: StepSettings, trainable, frozen, batch):
    """Teacher-forced loss sums and the token count of one eval batch."""
    parts = _loss_sums(graphs, settings, trainable, frozen, batch, None, False)
    return {**parts, "tokens": batch["loss_mask"].sum()}


def init_train_state(models: DistillModels, optimizer, seed: int) -> dict:
    return {
        "step": jnp.zeros((), jnp.int32),
        "opt_step": jnp.zeros((), jnp.int32),
        "params": models.trainable,
        "opt_state": optimizer.init(models.trainable),
        "rng": jax.random.PRNGKey(seed),
    }


def jit_train_step(models, settings, optimizer, schedule, mesh, state, batch_names):
    """The step under `jax.jit` with pinned in/out shardings and the train state donated."""
    state_sharding = state_shardings(mesh, state)
    frozen_sharding = state_shardings(mesh, models.frozen)
    return jax.jit(
        functools.partial(train_step, models.graphs, settings, optimizer, schedule),
        in_shardings=(
            state_sharding,
            frozen_sharding,
            {name: batch_sharding(mesh) for name in batch_names},
        ),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(models, settings, mesh, batch_names):
    trainable_sharding = state_shardings(mesh, models.trainable)
    frozen_sharding = state_shardings(mesh, models.frozen)
    return jax.jit(
        functools.partial(eval_sums, models.graphs, settings),
        in_shardings=(
            trainable_sharding,
            frozen_sharding,
            {name: batch_sharding(mesh) for name in batch_names},
        ),
        out_shardings=replicated(mesh),
    )


def optimizer_state_bytes(opt_state) -> int:
    """Bytes of optimiser state arrays (the step counters excluded)."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state) if x.ndim > 0)
