"""Whisper's logit rules, vectorised over rows: suppression, begin-suppression and timestamps.

They reproduce the processors `transformers` applies in Whisper's `generate` (in its order:
begin-suppress, suppress, then the timestamp rules), which follow OpenAI's decoder:
- `suppress_tokens` are never chosen; `begin_suppress_tokens` not as the first token;
- in timestamp mode `<|notimestamps|>` is banned, timestamps come in pairs (after a lone
  timestamp only another timestamp or end-of-text; after a pair, text), never decrease, the
  first token is a timestamp no later than `max_initial_timestamp_index`, and whenever the
  total probability of all timestamps beats the most likely text token, a timestamp is chosen.

Every rule reads only the row's token buffer and its length, so one function serves greedy
decoding and each of the K+1 positions a speculative verification scores.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from flax_distil.tokenizer import SpecialTokens

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class LogitRules:
    """Static decoding rules for one model and mode (hashable: a jit static argument)."""

    eos_token_id: int
    no_timestamps_token_id: int
    timestamp_begin: int
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    timestamps: bool = False
    max_initial_timestamp_index: int | None = 50

    @property
    def first_special_token(self) -> int:
        """Whisper's special tokens (end-of-text, languages, tasks, timestamps) are the ids from
        the lowest of them on."""
        ids = (self.eos_token_id, self.no_timestamps_token_id, self.timestamp_begin)
        return min(i for i in ids if i >= 0)

    @classmethod
    def from_generation_config(
        cls, generation: dict, tokenizer, *, timestamps: bool = False
    ) -> LogitRules:
        special = SpecialTokens.of(tokenizer)
        eos = generation.get("eos_token_id", special.end_of_text)
        return cls(
            eos_token_id=int(eos[0] if isinstance(eos, list) else eos),
            no_timestamps_token_id=special.no_timestamps,
            timestamp_begin=special.timestamp_begin,
            suppress_tokens=tuple(generation.get("suppress_tokens") or ()),
            begin_suppress_tokens=tuple(generation.get("begin_suppress_tokens") or ()),
            timestamps=timestamps,
            max_initial_timestamp_index=generation.get("max_initial_timestamp_index", 50),
        )


def _token_mask(vocab_size: int, token_ids: tuple[int, ...]) -> jax.Array:
    ids = jnp.asarray([t for t in token_ids if 0 <= t < vocab_size], jnp.int32)
    return jnp.zeros((vocab_size,), bool).at[ids].set(True)


def _token_at(tokens, index):
    return jnp.take_along_axis(tokens, jnp.clip(index, 0, tokens.shape[1] - 1)[:, None], 1)[:, 0]


def apply_rules(
    logits: jax.Array, tokens: jax.Array, length: jax.Array, prompt_length: int, rules: LogitRules
) -> jax.Array:
    """Masks logits [B, V] for the token at position `length` [B] of each row of tokens [B, L].

    tokens[b, :length[b]] is the row so far (prompt first); prompt_length is where generated
    tokens begin.
    """
    vocab = jnp.arange(logits.shape[-1])[None, :]
    step = length - prompt_length  # tokens generated so far, per row
    logits = jnp.where(_token_mask(logits.shape[-1], rules.suppress_tokens), NEG_INF, logits)
    begin_mask = _token_mask(logits.shape[-1], rules.begin_suppress_tokens)
    logits = jnp.where(begin_mask & (step == 0)[:, None], NEG_INF, logits)
    if not rules.timestamps:
        return logits
    return _timestamp_rules(logits, tokens, length, step, prompt_length, rules, vocab)


def _timestamp_rules(logits, tokens, length, step, prompt_length, rules, vocab):
    begin = rules.timestamp_begin
    is_timestamp_id = vocab >= begin
    logits = jnp.where(vocab == rules.no_timestamps_token_id, NEG_INF, logits)

    last_was_timestamp = (step >= 1) & (_token_at(tokens, length - 1) >= begin)
    penultimate_was_timestamp = (step < 2) | (_token_at(tokens, length - 2) >= begin)
    pair_closed = (last_was_timestamp & penultimate_was_timestamp)[:, None]
    pair_open = (last_was_timestamp & ~penultimate_was_timestamp)[:, None]
    logits = jnp.where(pair_closed & is_timestamp_id, NEG_INF, logits)
    logits = jnp.where(pair_open & (vocab < rules.eos_token_id), NEG_INF, logits)

    # Timestamps never decrease; a timestamp that closes a pair may repeat the opening one.
    positions = jnp.arange(tokens.shape[1])[None, :]
    generated = (positions >= prompt_length) & (positions < length[:, None])
    timestamp_positions = jnp.where(generated & (tokens >= begin), positions, -1)
    last_position = timestamp_positions.max(axis=1)
    last_timestamp = _token_at(tokens, last_position)
    lowest_allowed = jnp.where(
        last_position < 0,
        begin,
        jnp.where(pair_open[:, 0], last_timestamp, last_timestamp + 1),
    )
    logits = jnp.where(is_timestamp_id & (vocab < lowest_allowed[:, None]), NEG_INF, logits)

    first = (step == 0)[:, None]
    logits = jnp.where(first & ~is_timestamp_id, NEG_INF, logits)
    if rules.max_initial_timestamp_index is not None:
        latest = begin + rules.max_initial_timestamp_index
        logits = jnp.where(first & (vocab > latest), NEG_INF, logits)

    logprobs = jax.nn.log_softmax(logits, axis=-1)
    timestamp_logprob = jax.nn.logsumexp(jnp.where(is_timestamp_id, logprobs, NEG_INF), axis=-1)
    max_text_logprob = jnp.where(is_timestamp_id, NEG_INF, logprobs).max(axis=-1)
    prefer_timestamp = (timestamp_logprob > max_text_logprob)[:, None]
    return jnp.where(prefer_timestamp & ~is_timestamp_id, NEG_INF, logits)
