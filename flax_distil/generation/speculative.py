"""Batched speculative decoding in one `jax.jit`: a student drafts, the teacher verifies.

Each round, for every row at once: the student (its own decoder on the teacher's encoder
output) drafts K tokens greedily; the teacher scores the row's last committed token and the K
drafts in one call (K+1 positions); the row keeps its longest prefix of drafts that equal the
teacher's own greedy choices, plus the teacher's choice after that prefix. Rows advance by
different amounts; every shape stays static (per-row lengths and masks). The logit rules are
applied to the teacher's scores exactly as greedy decoding applies them, so the output is the
teacher's greedy output, token for token.

Cache bookkeeping: both caches hold every committed token but a row's last one. The student's
first call of a round feeds the last two committed tokens, which fills the one slot it misses
when all K drafts were accepted; only the last of the two goes through its output layer.
Rejected drafts leave stale cache slots beyond the row's length; attention masks them (keys at
positions after the query) until they are overwritten.

A draft may score only a frequent part of the vocabulary (`draft_head`): its output layer is
most of a small decoder's step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from flax_distil.generation.greedy import constrain_rows, prefill
from flax_distil.generation.rules import LogitRules, apply_rules
from flax_distil.whisper import write_rows


def _gather(tokens, start, count):
    """tokens[b, start[b] : start[b] + count] for each row."""
    return jnp.take_along_axis(tokens, start[:, None] + jnp.arange(count)[None, :], axis=1)


def draft_head(student, draft_vocab: int | None, first_special: int):
    """The draft's output layer: final hidden states [B, D] to full-vocabulary logits.

    The projection is most of a small decoder's step. With `draft_vocab` = n the draft scores
    only ids below n (BPE ids run roughly from frequent to rare) and the special tokens from
    `first_special` on; the ids between get -inf and are never drafted, which costs acceptance,
    never correctness: the teacher verifies every token. The scored rows are copied once per
    call, outside the decoding loop."""
    if draft_vocab is None or draft_vocab >= first_special:
        return student.decoder.project
    embedding = student.decoder.embed_tokens.embedding[...]
    rows = jnp.concatenate([embedding[:draft_vocab], embedding[first_special:]])

    def logits(hidden):
        scores = jnp.einsum("bd,vd->bv", hidden, rows.astype(hidden.dtype)).astype(jnp.float32)
        gap = jnp.full((hidden.shape[0], first_special - draft_vocab), -jnp.inf, jnp.float32)
        return jnp.concatenate([scores[:, :draft_vocab], gap, scores[:, draft_vocab:]], axis=1)

    return logits


def _draft(student, head, s_cache, tokens, length, prompt_length, prompt_start, rules, num_draft):
    """K greedy student tokens after each row's length; returns (tokens with drafts, cache)."""
    step = functools.partial(student.decode_step, project=False, first=prompt_start)
    start = jnp.maximum(length - 2, 0)
    hidden, s_cache = step(_gather(tokens, start, 2), s_cache, start)
    hidden = jnp.take_along_axis(hidden, (length - 1 - start)[:, None, None], axis=1)[:, 0]
    for j in range(num_draft):
        scores = apply_rules(head(hidden), tokens, length + j, prompt_length, rules)
        draft = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        tokens = write_rows(tokens, draft[:, None], length + j)
        if j + 1 < num_draft:
            hidden, s_cache = step(draft[:, None], s_cache, length + j)
            hidden = hidden[:, 0]
    return tokens, s_cache


@functools.partial(
    jax.jit,
    static_argnums=(0, 2),
    static_argnames=("rules", "max_new_tokens", "num_draft", "draft_vocab", "rows"),
)
def speculative_decode(
    t_graphdef: nnx.GraphDef,
    t_state: nnx.State,
    s_graphdef: nnx.GraphDef,
    s_state: nnx.State,
    encoder_out: jax.Array,
    prompt: jax.Array,
    prompt_start: jax.Array | None = None,
    *,
    rules: LogitRules,
    max_new_tokens: int,
    num_draft: int,
    draft_vocab: int | None = None,
    rows=None,
):
    """Teacher-greedy tokens [B, max_new_tokens], and each row's teacher verifications and
    accepted drafts [B] (their ratio is the mean number of drafts accepted per verification).
    Prompts are left-padded and `rows` pins the batch as in `greedy_decode`."""
    teacher, student = nnx.merge(t_graphdef, t_state), nnx.merge(s_graphdef, s_state)
    head = draft_head(student, draft_vocab, rules.first_special_token)
    batch, prompt_length = prompt.shape
    eos, end = rules.eos_token_id, prompt_length + max_new_tokens
    buffer = end + num_draft + 1  # room for a final round's drafts past the limit
    tokens = jnp.full((batch, buffer), eos, jnp.int32).at[:, :prompt_length].set(prompt)
    t_cache = prefill(teacher, encoder_out, prompt, buffer, prompt_start)
    s_cache = prefill(student, encoder_out, prompt, buffer, prompt_start)
    tokens, t_cache, s_cache = constrain_rows((tokens, t_cache, s_cache), rows)

    def keep_going(carry):
        return ~carry[4].all()

    def one_round(carry):
        tokens, length, t_cache, s_cache, done, row_rounds, accepted = carry
        drafted, s_cache = _draft(
            student, head, s_cache, tokens, length, prompt_length, prompt_start, rules, num_draft
        )
        logits, t_cache = teacher.decode_step(
            _gather(drafted, length - 1, num_draft + 1), t_cache, length - 1, first=prompt_start
        )
        choices = jnp.stack(
            [
                apply_rules(logits[:, j], drafted, length + j, prompt_length, rules).argmax(-1)
                for j in range(num_draft + 1)
            ],
            axis=1,
        ).astype(jnp.int32)
        matches = _gather(drafted, length, num_draft) == choices[:, :num_draft]
        num_accepted = jnp.cumprod(matches, axis=1).sum(axis=1)
        # Accepted drafts equal the teacher's choices, so the new tokens are choices[:count].
        is_end = (choices == eos) & (jnp.arange(num_draft + 1)[None, :] <= num_accepted[:, None])
        count = jnp.where(is_end.any(axis=1), jnp.argmax(is_end, axis=1), num_accepted) + 1
        count = jnp.where(done, 0, jnp.minimum(count, end - length))
        tokens = write_rows(tokens, choices, length)  # only the first `count` become committed
        active = ~done
        accepted = accepted + jnp.where(active, jnp.minimum(num_accepted, count), 0)
        row_rounds = row_rounds + active
        length = length + count
        done = done | is_end.any(axis=1) | (length >= end)
        return tokens, length, t_cache, s_cache, done, row_rounds, accepted

    length = jnp.full((batch,), prompt_length, jnp.int32)
    zeros = jnp.zeros((batch,), jnp.int32)
    carry = (tokens, length, t_cache, s_cache, jnp.zeros((batch,), bool), zeros, zeros)
    tokens, length, _, _, _, row_rounds, accepted = jax.lax.while_loop(keep_going, one_round, carry)
    positions = jnp.arange(max_new_tokens)[None, :] + prompt_length
    out = jnp.where(positions < length[:, None], tokens[:, prompt_length:end], eos)
    return constrain_rows((out, row_rounds, accepted), rows)
