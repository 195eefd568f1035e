"""Batched greedy (or sampled) decoding in one `jax.jit`: prefill the prompt, then a
`lax.while_loop`.

The model enters as NNX (graphdef, state): the graphdef and the `LogitRules` are static, so a
jitted program exists per (model structure, rules, batch size, prompt length, max new tokens)
and repeated calls with those shapes never compile again. The KV cache is a fixed-size buffer;
every row advances one token per iteration and rows that finished keep emitting end-of-text.

`rows` (a static `NamedSharding`, or None) pins every batch-major array (encoder output, KV
caches, tokens) to the batch split over devices: each device decodes its own rows with the
weights it holds, and nothing batch-sized crosses devices.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_distil.generation.rules import LogitRules, apply_rules


@dataclasses.dataclass
class Generated:
    """Generated tokens [B, N] (end-of-text padded) and each row's length, end-of-text included;
    with speculative decoding, each row's teacher verifications and accepted drafts [B]."""

    tokens: np.ndarray
    lengths: np.ndarray
    verifications: np.ndarray | None = None
    accepted_drafts: np.ndarray | None = None

    @property
    def mean_accepted(self) -> float:
        """Draft tokens accepted per teacher verification (speculative decoding)."""
        if self.verifications is None:
            return 0.0
        return float(self.accepted_drafts.sum() / max(self.verifications.sum(), 1))

    def rows(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths, strict=True)]


def constrain_rows(tree, rows):
    """Every array of `tree` (batch-major) pinned to the row sharding `rows`; None: unchanged."""
    if rows is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, rows), tree)


@functools.partial(jax.jit, static_argnums=0, static_argnames="rows")
def encode(graphdef: nnx.GraphDef, state: nnx.State, features: jax.Array, rows=None) -> jax.Array:
    return constrain_rows(nnx.merge(graphdef, state).encode(features), rows)


def generated_lengths(tokens: jax.Array, eos_token_id: int) -> jax.Array:
    """Per-row count of tokens up to and including the first end-of-text."""
    is_end = tokens == eos_token_id
    return jnp.where(is_end.any(axis=1), jnp.argmax(is_end, axis=1) + 1, tokens.shape[1])


def prefill(model, encoder_out, prompt, cache_length, prompt_start=None):
    """Cache for the prompt minus its last token, which the caller feeds next."""
    batch, prompt_length = prompt.shape
    cache = model.init_cache(encoder_out, cache_length)
    if prompt_length > 1:
        start = jnp.zeros(batch, jnp.int32)
        _, cache = model.decode_step(prompt[:, :-1], cache, start, first=prompt_start)
    return cache


@functools.partial(jax.jit, static_argnums=0, static_argnames=("rules", "max_new_tokens", "rows"))
def greedy_decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    encoder_out: jax.Array,
    prompt: jax.Array,
    prompt_start: jax.Array | None = None,
    key: jax.Array | None = None,
    temperature: jax.Array | float = 1.0,
    *,
    rules: LogitRules,
    max_new_tokens: int,
    rows=None,
) -> jax.Array:
    """Greedy tokens [B, max_new_tokens] after prompt [B, P]; end-of-text pads finished rows.

    Prompts of different lengths are left-padded to P, with prompt_start [B] the index of each
    row's first token (None: every prompt fills P); padding never affects a row's tokens.
    With a PRNG `key`, each token is sampled instead, from the rule-masked softmax at
    `temperature` (the step's key is `fold_in(key, step)`: reproducible for a key)."""
    model = nnx.merge(graphdef, state)
    batch, prompt_length = prompt.shape
    total = prompt_length + max_new_tokens
    eos = rules.eos_token_id
    tokens = jnp.full((batch, total), eos, jnp.int32).at[:, :prompt_length].set(prompt)
    tokens, cache = constrain_rows(
        (tokens, prefill(model, encoder_out, prompt, total, prompt_start)), rows
    )

    def keep_going(carry):
        step, _, _, done = carry
        return (step < max_new_tokens) & ~done.all()

    def advance(carry):
        step, tokens, cache, done = carry
        position = jnp.full((batch,), prompt_length - 1 + step, jnp.int32)
        last = jnp.take_along_axis(tokens, position[:, None], axis=1)
        logits, cache = model.decode_step(last, cache, position, first=prompt_start)
        scores = apply_rules(logits[:, 0], tokens, position + 1, prompt_length, rules)
        if key is None:
            chosen = jnp.argmax(scores, axis=-1)
        else:
            step_key = jax.random.fold_in(key, step)
            chosen = jax.random.categorical(step_key, scores / temperature, axis=-1)
        chosen = jnp.where(done, eos, chosen.astype(jnp.int32))
        tokens = jax.lax.dynamic_update_slice(tokens, chosen[:, None], (0, prompt_length + step))
        return step + 1, tokens, cache, done | (chosen == eos)

    carry = (jnp.int32(0), tokens, cache, jnp.zeros((batch,), bool))
    _, tokens, _, _ = jax.lax.while_loop(keep_going, advance, carry)
    return constrain_rows(tokens[:, prompt_length:], rows)
