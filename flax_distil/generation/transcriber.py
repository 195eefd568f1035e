"""`Transcriber`: a loaded model (and optional draft model) placed on a mesh, from audio to text.

It owns what sits around the jitted loops: the mesh (default: this process's devices, the batch
split over all of them, weights replicated or, with `shard_weights`, split too), placing
weights and rows on it, padding batches to a few bucket sizes (multiples of the device count)
and prompts to a few widths, the decoder prompt with language detection for multilingual
models, choosing greedy or speculative decoding, and turning tokens into text and timestamped
segments. `transcribe` is the one path from clips to transcripts (`transcripts.py`).

On a mesh that spans several processes (evaluation during multi-host training) every process
passes the same clips, contributes its share of each batch's rows and gets every transcript.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_distil import parallel
from flax_distil.audio import log_mel
from flax_distil.errors import FlaxDistilError
from flax_distil.generation.batching import bucket_rows, pad_prompts, pad_rows
from flax_distil.generation.greedy import Generated, encode, generated_lengths, greedy_decode
from flax_distil.generation.options import DecodeOptions
from flax_distil.generation.rules import LogitRules
from flax_distil.generation.scoring import score_tokens
from flax_distil.generation.speculative import speculative_decode
from flax_distil.generation.transcripts import Transcript, transcribe_clips
from flax_distil.tokenizer import (
    DEFAULT_MAX_NEW_TOKENS,
    SECONDS_PER_TIMESTAMP,
    SpecialTokens,
    decoder_prompt,
)


def default_dtype():
    """bfloat16 on accelerators (large-v3's cross-attention cache is 491 MB per row in float32),
    float32 on CPUs (no bfloat16 matmul units there)."""
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


@functools.partial(jax.jit, static_argnums=0, static_argnames="rows")
def _detect_language(graphdef, state, encoder_out, start_token, language_ids, rows=None):
    model = nnx.merge(graphdef, state)
    tokens = jnp.full((encoder_out.shape[0], 1), start_token, jnp.int32)
    logits = model.decode(tokens, encoder_out)[:, 0]
    detected = language_ids[jnp.argmax(logits[:, language_ids], axis=-1)]
    return detected if rows is None else jax.lax.with_sharding_constraint(detected, rows)


class Transcriber:
    """Greedy (or, with an assistant, speculative) Whisper decoding on a mesh of devices."""

    def __init__(
        self,
        model,
        tokenizer,
        generation: dict | None = None,
        assistant=None,
        draft_vocab: int | None = None,
        mesh=None,
    ):
        """`draft_vocab`: the assistant scores only token ids below it and the special tokens
        (cheaper drafts; see `speculative.draft_head`); None scores them all. `mesh`: a
        (data, fsdp) mesh (`parallel.make_mesh`); default: this process's devices, weights
        replicated."""
        if tokenizer is None:
            raise FlaxDistilError("the model has no tokenizer; load it from a full checkpoint")
        self.config = model.config
        self.tokenizer = tokenizer
        self.special = SpecialTokens.of(tokenizer)
        self.generation = generation or {}
        self.mesh = mesh if mesh is not None else parallel.local_mesh()
        self.row_sharding = parallel.batch_sharding(self.mesh)
        self.graphdef, self.state = self._placed(model)
        self.assistant = None
        if assistant is not None:
            if assistant.config.d_model != model.config.d_model:
                raise FlaxDistilError(
                    f"assistant d_model {assistant.config.d_model} differs from the model's "
                    f"{model.config.d_model}: its decoder cannot read the model's encoder output"
                )
            if assistant.config.vocab_size != model.config.vocab_size:
                raise FlaxDistilError("assistant and model have different vocabularies")
            self.assistant = self._placed(assistant)
        if draft_vocab is not None and draft_vocab < 1:
            raise FlaxDistilError(f"draft_vocab must be at least 1, got {draft_vocab}")
        self.draft_vocab = draft_vocab

    def _placed(self, model):
        graphdef, state = nnx.split(model)
        return graphdef, jax.device_put(state, parallel.state_shardings(self.mesh, state))

    @classmethod
    def load(
        cls,
        source: str,
        assistant: str | None = None,
        dtype=None,
        draft_vocab: int | None = None,
        shard_weights: bool = False,
    ) -> Transcriber:
        """`dtype`: of the weights, the computation and the KV caches (logit rules and argmax
        stay float32); default `default_dtype()`. `shard_weights`: split the weights over this
        process's devices instead of copying them to each (models that do not fit a device)."""
        from flax_distil.interop import build_model, load_checkpoint

        dtype = jnp.dtype(dtype or default_dtype())
        checkpoint = load_checkpoint(source)
        model = build_model(checkpoint, dtype=dtype, param_dtype=dtype)
        draft = None
        if assistant:
            draft = build_model(load_checkpoint(assistant), dtype=dtype, param_dtype=dtype)
        mesh = parallel.local_mesh(shard_weights)
        return cls(model, checkpoint.tokenizer, checkpoint.generation, draft, draft_vocab, mesh)

    @property
    def dtype(self):
        return jax.tree.leaves(self.state)[0].dtype

    def rules(self, timestamps: bool) -> LogitRules:
        return LogitRules.from_generation_config(
            self.generation, self.tokenizer, timestamps=timestamps
        )

    def transcribe(
        self, clips: list[np.ndarray], options: DecodeOptions, progress: str | None = None
    ) -> list[Transcript]:
        """Transcripts of 16 kHz mono clips of any length, in order (see `transcripts.py`);
        `progress`: a progress bar's title."""
        return transcribe_clips(self, clips, options, progress)

    def place_rows(self, array: np.ndarray) -> jax.Array:
        """`array` [rows, ...] (the same on every process) split over the mesh by rows."""
        return parallel.shard_rows(self.mesh, np.asarray(array))

    def encode(self, features) -> jax.Array:
        """Encoder output [B, frames / 2, D] of features [B, mels, frames], rows on the mesh."""
        if not isinstance(features, jax.Array) or features.sharding != self.row_sharding:
            features = self.place_rows(np.asarray(features))
        return encode(self.graphdef, self.state, features, rows=self.row_sharding)

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
                rows=self.row_sharding,
            )
            prompts[:, 1] = parallel.gather_rows(detected)
        return prompts

    def start_tokens(self, features, *, language=None, task="transcribe", timestamps=False):
        """The decoder's start tokens for one clip; a multilingual model without a language
        detects it from the clip's first window of features [mels, 3000]."""
        if not (self.config.is_multilingual and language is None):
            multilingual = self.config.is_multilingual
            return decoder_prompt(
                self.tokenizer,
                multilingual=multilingual,
                language=language,
                task=task,
                timestamps=timestamps,
            )
        encoder_out = self.encode_rows(np.asarray(features)[None])
        return self.prompts(encoder_out, task=task, timestamps=timestamps)[0].tolist()

    def encode_rows(self, features) -> jax.Array:
        """Encoder output of features [B, mels, 3000], rows padded to a bucket and split over
        the mesh (the first B rows are the features')."""
        rows = bucket_rows(len(features), self.mesh.devices.size)
        return self.encode(self.place_rows(pad_rows(np.asarray(features), rows)))

    def generate(self, features, **decoding) -> Generated:
        """Tokens for features [B, mels, 3000] (see `decode` for the options)."""
        return self.decode(self.encode_rows(features), len(features), **decoding)

    def generate_audio(self, audio: np.ndarray, **decoding) -> Generated:
        """Tokens for 30 s windows of audio [B, 480000]: the log-mel is computed on the mesh."""
        batch = len(audio)
        rows = bucket_rows(batch, self.mesh.devices.size)
        placed = self.place_rows(pad_rows(audio, rows))
        features = log_mel(placed, self.config.num_mel_bins)
        return self.decode(self.encode(features), batch, **decoding)

    def decode(
        self,
        encoder_out: jax.Array,
        batch: int,
        *,
        language: str | None = None,
        task: str = "transcribe",
        timestamps: bool = False,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        num_draft: int = 0,
        prompts: list[list[int]] | None = None,
        temperature: float = 0.0,
        key: jax.Array | None = None,
    ) -> Generated:
        """Tokens of the first `batch` rows of `encoder_out` (padded rows after them);
        speculative when num_draft > 0 and an assistant is loaded, with identical output.
        `prompts`: each row's own decoder prompt (any lengths; e.g. <|startofprev|> + previous
        text + start tokens) instead of the start tokens built from language, task and
        timestamps. `temperature` > 0: sampled with the PRNG `key` (never speculative)."""
        if prompts is None:
            prompts = self.prompts(encoder_out, language=language, task=task, timestamps=timestamps)
            prompt_start = None
        else:
            prompts, prompt_start = self._padded_prompts(prompts, encoder_out.shape[0])
        limit = self.max_new_tokens_limit(prompts.shape[1], num_draft)
        if not 0 < max_new_tokens <= limit:
            raise FlaxDistilError(f"max_new_tokens must be between 1 and {limit}")
        rules = self.rules(timestamps)
        decoding = dict(rules=rules, max_new_tokens=max_new_tokens, rows=self.row_sharding)
        prompts = self.place_rows(prompts)
        verifications = accepted = None
        sampling = temperature > 0
        if sampling and key is None:
            raise FlaxDistilError("sampling at a temperature above 0 needs a PRNG key")
        if num_draft and self.assistant is not None and not sampling:
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
            verifications = parallel.gather_rows(verifications)[:batch]
            accepted = parallel.gather_rows(accepted)[:batch]
        else:
            sample = (key, jnp.float32(temperature)) if sampling else ()
            tokens = greedy_decode(
                self.graphdef, self.state, encoder_out, prompts, prompt_start, *sample, **decoding
            )
        lengths = generated_lengths(tokens, rules.eos_token_id)
        return Generated(
            tokens=parallel.gather_rows(tokens)[:batch],
            lengths=parallel.gather_rows(lengths)[:batch],
            verifications=verifications,
            accepted_drafts=accepted,
        )

    def _padded_prompts(self, prompts: list[list[int]], rows: int):
        """Prompts left-padded to one width and padded to `rows` rows, with each row's first
        real slot (placed on the mesh; None when no row needed padding)."""
        padded, prompt_start = pad_prompts(
            [list(p) for p in prompts], self.config.max_target_positions
        )
        if prompt_start is not None:
            prompt_start = self.place_rows(pad_rows(prompt_start, rows))
        return pad_rows(padded, rows), prompt_start

    def score(
        self, encoder_out: jax.Array, prompts: list[list[int]], generated: Generated, start_count
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each of `generated`'s rows (decoded with timestamps after `prompts`): the sum of
        its tokens' log-probabilities, the tokens scored and the no-speech probability (see
        `scoring.py`); `start_count`: how many start tokens end each prompt."""
        rows = encoder_out.shape[0]
        prompts, prompt_start = self._padded_prompts(prompts, rows)
        # Scored up to the longest row, in steps of 64 positions (a few compiled programs).
        scored = min(generated.tokens.shape[1], -(-int(generated.lengths.max()) // 64) * 64)
        tokens = self.place_rows(pad_rows(generated.tokens[:, :scored], rows))
        scores = score_tokens(
            self.graphdef,
            self.state,
            encoder_out,
            self.place_rows(prompts),
            prompt_start,
            tokens,
            rules=self.rules(timestamps=True),
            start_count=start_count,
            rows=self.row_sharding,
        )
        batch = len(generated.tokens)
        return tuple(parallel.gather_rows(score)[:batch] for score in scores)

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
