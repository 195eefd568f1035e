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
from flax_distil.tokenizer import SpecialTokens, decoder_prompt

DEFAULT_MAX_NEW_TOKENS = 224
SECONDS_PER_TIMESTAMP = 0.02


def bucket_size(batch: int) -> int:
    """Smallest power of two >= batch: the batch sizes programs are compiled for."""
    return 1 << max(batch - 1, 0).bit_length()


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
        prompts: np.ndarray | None = None,
    ) -> Generated:
        """Tokens for features [B, mels, 3000]; speculative when num_draft > 0 and an assistant
        is loaded. Output is identical either way."""
        batch = len(features)
        rows = bucket_size(batch)
        encoder_out = self.encode(_pad_rows(features, rows))
        if prompts is None:
            prompts = self.prompts(encoder_out, language=language, task=task, timestamps=timestamps)
        else:
            prompts = np.asarray(_pad_rows(prompts, rows))
        limit = self.config.max_target_positions - prompts.shape[1] - (num_draft + 1)
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
                num_draft=num_draft,
                draft_vocab=self.draft_vocab,
                **decoding,
            )
        else:
            tokens = greedy_decode(self.graphdef, self.state, encoder_out, prompts, **decoding)
        lengths = generated_lengths(tokens, rules.eos_token_id)
        return Generated(
            tokens=np.asarray(tokens)[:batch],
            lengths=np.asarray(lengths)[:batch],
            verifications=int(verifications),
            accepted_drafts=int(accepted),
        )

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
