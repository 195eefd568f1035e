"""Scoring decoded tokens: what OpenAI's temperature fallback and no-speech skipping judge.

After a window is decoded (greedy, sampled or speculative), one teacher-forced decoder pass over
prompt + tokens gives, per row:
- the sum of the tokens' log-probabilities (end-of-text included) under the softmax of the
  rule-masked logits, at temperature 1: OpenAI's and transformers' `avg_logprob` is this sum
  over the token count;
- the probability of `<|nospeech|>` at the `<|startoftranscript|>` position, from the raw
  logits (it does not depend on the tokens or the temperature).
One pass in parallel over the positions costs about as much as a few decoding steps, and serves
every decoding path alike.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from flax_distil.generation.greedy import constrain_rows, generated_lengths
from flax_distil.generation.rules import LogitRules, apply_rules


@functools.partial(jax.jit, static_argnums=0, static_argnames=("rules", "start_count", "rows"))
def score_tokens(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    encoder_out: jax.Array,
    prompt: jax.Array,
    prompt_start: jax.Array | None,
    tokens: jax.Array,
    *,
    rules: LogitRules,
    start_count: int,
    rows=None,
):
    """(sum of log-probabilities [B], tokens scored [B], no-speech probability [B]) of tokens
    [B, N] (end-of-text padded) decoded after prompt [B, P] (left-padded as in `greedy_decode`),
    whose last `start_count` tokens are the start tokens, `<|startoftranscript|>` first."""
    model = nnx.merge(graphdef, state)
    batch, prompt_length = prompt.shape
    full = jnp.concatenate([prompt, tokens], axis=1)
    cache = model.init_cache(encoder_out, full.shape[1])
    start = jnp.zeros(batch, jnp.int32)
    hidden, _ = model.decode_step(full[:, :-1], cache, start, project=False, first=prompt_start)
    # Only the positions that score a generated token, and <|startoftranscript|>'s, go through
    # the 51,864-way output layer (the prompt's would double the cost).
    logits = model.decoder.project(hidden[:, prompt_length - 1 :])  # [:, j]: generated token j

    def masked(position_logits, length):
        lengths = jnp.full((batch,), length, jnp.int32)
        return apply_rules(position_logits, full, lengths, prompt_length, rules)

    positions = prompt_length + jnp.arange(tokens.shape[1])
    scores = jax.vmap(masked, in_axes=(1, 0), out_axes=1)(logits, positions)
    logprobs = jax.nn.log_softmax(scores, axis=-1)
    chosen = jnp.take_along_axis(logprobs, tokens[..., None], axis=-1)[..., 0]
    count = generated_lengths(tokens, rules.eos_token_id)
    scored = jnp.arange(tokens.shape[1])[None, :] < count[:, None]
    total = jnp.where(scored, chosen, 0.0).sum(axis=1)
    start_of_transcript = model.decoder.project(hidden[:, prompt_length - start_count])
    no_speech_token = rules.no_timestamps_token_id - 1  # <|nospeech|> (<|nocaptions|>)
    no_speech = jax.nn.softmax(start_of_transcript, axis=-1)[:, no_speech_token]
    return constrain_rows((total, count, no_speech), rows)
