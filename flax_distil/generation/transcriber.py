"""`Transcriber`: a loaded model (plus an optional draft model) ready to turn features into text.

It owns what sits around the jitted loops: splitting the NNX models once, padding batches to
power-of-two buckets (so a handful of programs serve every batch size), the decoder prompt with
language detection for multilingual models, choosing greedy or speculative decoding, and turning
tokens into text and timestamped segments.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_distil.errors import FlaxDistilError
from flax_distil.generation.greedy import Generated, encode, generated_lengths, greedy_decode
from flax_distil.generation.rules import LogitRules
from flax_distil.generation.speculative import speculative_decode
from flax_distil.tokenizer import DEFAULT_MAX_NEW_TOKENS, SpecialTokens, decoder_prompt

SECONDS_PER_TIMESTAMP = 0.02


def bucket_size(batch: int) -> int:
    """Smallest power of two >= batch: the batch sizes programs are compiled for."""
    return 1 << max(batch - 1, 0).bit_length()


def prompt_width(length: int, max_target_positions: int) -> int:
    """Slots a prompt of `length` tokens is left-padded to: powers of two from 8, then half the
    decoder's positions plus 4 (OpenAI's longest prompt: 223 previous tokens, <|startofprev|>
    and 3 start tokens), so a few programs serve every prompt. Longer prompts stay as they are."""
    if length <= 4:
        return length  # the plain start sequences: no padding
    widths = [8, 16, 32, 64, 128, max_target_positions // 2 + 4]
    return next((w for w in widths if w >= length), length)


def pad_prompts(prompts: list[list[int]], max_target_positions: int):
    """Left-pads token lists to one width: (prompts [B, P], first real slot per row [B], or None
    when no row needed padding)."""
    width = prompt_width(max(len(p) for p in prompts), max_target_positions)
    starts = np.asarray([width - len(p) for p in prompts], np.int32)
    padded = np.zeros((len(prompts), width), np.int32)
    for row, prompt in zip(padded, prompts, strict=True):
        row[width - len(prompt) :] = prompt
    return padded, (starts if starts.any() else None)


def _pad_rows(array, rows: int):
    array = jnp.asarray(array)
    if array.shape[0] == rows:
        return array
    return jnp.concatenate([array, jnp.repeat(array[-1:], rows - array.shape[0], axis=0)])


@functools.partial(jax.jit, static_argnums=0)
def _detect_language(graphdef, state, encoder_out, start_token, language_ids):
    model = nnx.merge(graphdef, state)
    tokens = jnp.full((encoder_out.shape[0], 1), start_token, jnp.int32)
    logits = model.decode(tokens, encoder_out)[:, 0]
    return language_ids[jnp.argmax(logits[:, language_ids], axis=-1)]


class Transcriber:
    """Greedy (or, with an assistant, speculative) Whisper decoding for batches of features."""

    def __init__(
        self,
        model,
        tokenizer,
        generation: dict | None = None,
        assistant=None,
        draft_vocab: int | None = None,
    ):
        """`draft_vocab`: the assistant scores only token ids below it and the special tokens
        (cheaper drafts; see `speculative.draft_head`); None scores them all."""
        if tokenizer is None:
            raise FlaxDistilError("the model has no tokenizer; load it from a full checkpoint")
        self.config = model.config
        self.tokenizer = tokenizer
        self.special = SpecialTokens.of(tokenizer)
        self.generation = generation or {}
        self.graphdef, self.state = nnx.split(model)
        self.assistant = None
        if assistant is not None:
            if assistant.config.d_model != model.config.d_model:
                raise FlaxDistilError(
                    f"assistant d_model {assistant.config.d_model} differs from the model's "
                    f"{model.config.d_model}: its decoder cannot read the model's encoder output"
                )
            if assistant.config.vocab_size != model.config.vocab_size:
                raise FlaxDistilError("assistant and model have different vocabularies")
            self.assistant = nnx.split(assistant)
        if draft_vocab is not None and draft_vocab < 1:
            raise FlaxDistilError(f"draft_vocab must be at least 1, got {draft_vocab}")
        self.draft_vocab = draft_vocab

    @classmethod
    def load(
        cls,
        source: str,
        assistant: str | None = None,
        dtype=jnp.float32,
        draft_vocab: int | None = None,
    ) -> Transcriber:
        from flax_distil.interop import build_model, load_checkpoint

        checkpoint = load_checkpoint(source)
        model = build_model(checkpoint, dtype=dtype)
        draft = build_model(load_checkpoint(assistant), dtype=dtype) if assistant else None
        return cls(model, checkpoint.tokenizer, checkpoint.generation, draft, draft_vocab)

    def rules(self, timestamps: bool) -> LogitRules:
        return LogitRules.from_generation_config(
            self.generation, self.tokenizer, timestamps=timestamps
        )

    def encode(self, features) -> jax.Array:
        return encode(self.graphdef, self.state, jnp.asarray(features))

    def prompts(self, encoder_out, *, language=None, task="transcribe", timestamps=False):
        """Decoder prompts [B, P]; a multilingual model without a language detects it per row."""
        batch = encoder_out.shape[0]
        multilingual = self.config.is_multilingual
        prompt = decoder_prompt(
            self.tokenizer,
            multilingual=multilingual,
            language=language,
            task=task,
            timestamps=timestamps,
        )
        prompts = np.tile(np.asarray(prompt, np.int32), (batch, 1))
        if multilingual and language is None:
            language_ids = jnp.asarray(list(self.special.languages.values()), jnp.int32)
            detected = _detect_language(
                self.graphdef,
                self.state,
                encoder_out,
                self.special.start_of_transcript,
                language_ids,
            )
            prompts[:, 1] = np.asarray(detected)
        return prompts

    def generate(
        self,
        features,
        *,
        language: str | None = None,
        task: str = "transcribe",
        timestamps: bool = False,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        num_draft: int = 0,
        prompts: list[list[int]] | None = None,
    ) -> Generated:
        """Tokens for features [B, mels, 3000]; speculative when num_draft > 0 and an assistant
        is loaded. Output is identical either way. `prompts`: each row's own decoder prompt
        (any lengths; e.g. <|startofprev|> + previous text + start tokens) instead of the
        start tokens built from language, task and timestamps."""
        batch = len(features)
        rows = bucket_size(batch)
        encoder_out = self.encode(_pad_rows(features, rows))
        prompt_start = None
        if prompts is None:
            prompts = self.prompts(encoder_out, language=language, task=task, timestamps=timestamps)
        else:
            padded, prompt_start = pad_prompts(
                [list(p) for p in prompts], self.config.max_target_positions
            )
            prompts = np.asarray(_pad_rows(padded, rows))
            if prompt_start is not None:
                prompt_start = _pad_rows(prompt_start, rows)
        limit = self.max_new_tokens_limit(prompts.shape[1], num_draft)
        if not 0 < max_new_tokens <= limit:
            raise FlaxDistilError(f"max_new_tokens must be between 1 and {limit}")
        rules = self.rules(timestamps)
        verifications = accepted = 0
        decoding = dict(rules=rules, max_new_tokens=max_new_tokens)
        if num_draft and self.assistant is not None:
            tokens, verifications, accepted = speculative_decode(
                self.graphdef,
                self.state,
                *self.assistant,
                encoder_out,
                prompts,
                prompt_start,
                num_draft=num_draft,
                draft_vocab=self.draft_vocab,
                **decoding,
            )
        else:
            tokens = greedy_decode(
                self.graphdef, self.state, encoder_out, prompts, prompt_start, **decoding
            )
        lengths = generated_lengths(tokens, rules.eos_token_id)
        return Generated(
            tokens=np.asarray(tokens)[:batch],
            lengths=np.asarray(lengths)[:batch],
            verifications=int(verifications),
            accepted_drafts=int(accepted),
        )

    def max_new_tokens_limit(self, prompt_slots: int, num_draft: int = 0) -> int:
        """The most tokens a row can generate after `prompt_slots` prompt slots (speculative
        decoding needs room for a last round of drafts)."""
        return self.config.max_target_positions - prompt_slots - (num_draft + 1)

    def text(self, tokens) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True).strip()

    def segments(self, tokens, offset: float = 0.0) -> list[dict]:
        """Timestamped segments from a timestamp-mode row: pairs <|t0|> text <|t1|>."""
        begin = self.special.timestamp_begin
        segments, start, text_tokens = [], None, []
        for token in tokens:
            if token < begin:
                text_tokens.append(int(token))
                continue
            time = offset + (int(token) - begin) * SECONDS_PER_TIMESTAMP
            if start is None:
                start = time
            else:
                segments.append(
                    {
                        "start": round(start, 2),
                        "end": round(time, 2),
                        "text": self.text(text_tokens),
                    }
                )
                start, text_tokens = None, []
        if start is not None and text_tokens:  # unfinished final segment
            segments.append({"start": round(start, 2), "end": None, "text": self.text(text_tokens)})
        return segments
