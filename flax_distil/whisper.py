"""Whisper encoder-decoder in Flax NNX, for every Whisper size.

The module tree mirrors Hugging Face's `WhisperForConditionalGeneration` attribute names
(`encoder.layers[i].self_attn.q_proj`, ...), so checkpoint conversion is a rename plus a
transpose (see `flax_distil.interop.hf`). Incremental decoding uses an explicit cache pytree
(`DecoderCache`) that the caller passes in and gets back, so decoding loops stay pure and
jit-friendly. Nothing here knows about teachers, data or training.

    model = Whisper(config, rngs=nnx.Rngs(0))
    encoder_out = model.encode(features)                  # [B, 1500, D]
    logits = model.decode(tokens, encoder_out)            # teacher-forced, [B, T, V]
    cache = model.init_cache(encoder_out, max_length=448)
    logits, cache = model.decode_step(tokens, cache, start)  # incremental
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_distil.errors import FlaxDistilError

ACTIVATION = "gelu"  # every released Whisper uses exact (erf) GELU
LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class WhisperConfig:
    """Architecture of a Whisper model; field names follow `transformers.WhisperConfig`."""

    vocab_size: int = 51865
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    decoder_ffn_dim: int = 1536
    max_source_positions: int = 1500
    max_target_positions: int = 448
    scale_embedding: bool = False
    pad_token_id: int = 50257
    bos_token_id: int = 50257
    eos_token_id: int = 50257
    decoder_start_token_id: int = 50258

    def __post_init__(self):
        for heads_field in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, heads_field)
            if heads <= 0 or self.d_model % heads:
                raise FlaxDistilError(
                    f"d_model={self.d_model} is not divisible by {heads_field}={heads}"
                )
        for name in ("encoder_layers", "decoder_layers", "vocab_size", "num_mel_bins"):
            if getattr(self, name) <= 0:
                raise FlaxDistilError(f"WhisperConfig.{name} must be positive")

    @property
    def num_frames(self) -> int:
        """Log-mel frames the encoder expects (two per encoder position)."""
        return 2 * self.max_source_positions

    @property
    def is_multilingual(self) -> bool:
        return self.vocab_size >= 51865

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> WhisperConfig:
        """Builds the config from a Hugging Face `config.json` dict, rejecting non-Whisper ones."""
        if hf.get("model_type") != "whisper":
            raise FlaxDistilError(
                f"{source}: model_type is {hf.get('model_type')!r}, not 'whisper'; "
                "point at a Whisper checkpoint"
            )
        activation = hf.get("activation_function", ACTIVATION)
        if activation != ACTIVATION:
            raise FlaxDistilError(f"{source}: activation_function {activation!r} is not supported")
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: hf[name] for name in names if hf.get(name) is not None})

    def to_hf_dict(self) -> dict[str, Any]:
        """The fields a Hugging Face `config.json` needs to rebuild this architecture."""
        return {
            **dataclasses.asdict(self),
            "model_type": "whisper",
            "architectures": ["WhisperForConditionalGeneration"],
            "activation_function": ACTIVATION,
            "num_hidden_layers": self.encoder_layers,
            "tie_word_embeddings": True,
        }


class LayerCache(NamedTuple):
    """Keys and values of one decoder layer, `[B, H, L, Dh]` (self) and `[B, H, S, Dh]` (cross).

    Heads come before positions: a one-token decoding step then reads each head's keys
    contiguously (measured 2x faster cross-attention per step than `[B, S, H, Dh]`).
    """

    self_k: jax.Array
    self_v: jax.Array
    cross_k: jax.Array
    cross_v: jax.Array


DecoderCache = tuple[LayerCache, ...]


def sinusoids(length: int, channels: int) -> np.ndarray:
    """Whisper's fixed encoder position table: sin in the first half, cos in the second."""
    log_timescale_increment = math.log(10000) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_timescale_increment * np.arange(channels // 2))
    scaled_time = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


def _attend(q, k, v, mask):
    """Scaled dot-product attention; q [B,T,H,D], k/v [B,H,S,D], mask [B,T,S] or None.

    Heads-first batched matmuls, with the softmax normalisation applied to the [B,H,T,D] output
    rather than the [B,H,T,S] weights: together ~2x faster encoder attention on CPU.
    """
    q = jnp.swapaxes(q, 1, 2) * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    scores = jnp.einsum("bhtd,bhsd->bhts", q, k, preferred_element_type=jnp.float32)
    if mask is not None:
        scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
    weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
    out = jnp.einsum(
        "bhts,bhsd->bhtd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    out = out / weights.sum(axis=-1, keepdims=True)
    return jnp.swapaxes(out, 1, 2).astype(v.dtype)


class Attention(nnx.Module):
    """Multi-head attention with Whisper's layout: no bias on the key projection."""

    def __init__(self, d_model: int, num_heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        linear = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = nnx.Linear(d_model, d_model, **linear)
        self.k_proj = nnx.Linear(d_model, d_model, use_bias=False, **linear)
        self.v_proj = nnx.Linear(d_model, d_model, **linear)
        self.out_proj = nnx.Linear(d_model, d_model, **linear)

    def split_heads(self, x):
        return x.reshape(*x.shape[:-1], self.num_heads, -1)

    def key_value(self, x):
        """Keys and values [B, H, S, Dh] of x [B, S, D]."""
        k, v = self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))
        return jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)

    def __call__(self, x, k, v, mask):
        out = _attend(self.split_heads(self.q_proj(x)), k, v, mask)
        return self.out_proj(out.reshape(*out.shape[:-2], -1))


def _feed_forward(layer, x):
    return layer.fc2(jax.nn.gelu(layer.fc1(x), approximate=False))


def _layer_norm(d_model, dtype, param_dtype, rngs):
    return nnx.LayerNorm(
        d_model, epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )


class EncoderLayer(nnx.Module):
    def __init__(self, config: WhisperConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.d_model
        self.self_attn_layer_norm = _layer_norm(d, **kw)
        self.self_attn = Attention(d, config.encoder_attention_heads, **kw)
        self.final_layer_norm = _layer_norm(d, **kw)
        self.fc1 = nnx.Linear(d, config.encoder_ffn_dim, **kw)
        self.fc2 = nnx.Linear(config.encoder_ffn_dim, d, **kw)

    def __call__(self, x):
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.key_value(h)
        x = x + self.self_attn(h, k, v, mask=None)
        return x + _feed_forward(self, self.final_layer_norm(x))


class DecoderLayer(nnx.Module):
    def __init__(self, config: WhisperConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.d_model
        self.self_attn_layer_norm = _layer_norm(d, **kw)
        self.self_attn = Attention(d, config.decoder_attention_heads, **kw)
        self.encoder_attn_layer_norm = _layer_norm(d, **kw)
        self.encoder_attn = Attention(d, config.decoder_attention_heads, **kw)
        self.final_layer_norm = _layer_norm(d, **kw)
        self.fc1 = nnx.Linear(d, config.decoder_ffn_dim, **kw)
        self.fc2 = nnx.Linear(config.decoder_ffn_dim, d, **kw)

    def __call__(self, x, layer_cache: LayerCache, start, mask, dropout=None):
        """One layer over tokens written at `start` per row; returns output and updated cache.

        `dropout` = (rate, key) drops units of each residual branch (training only)."""
        h = self.self_attn_layer_norm(x)
        new_k, new_v = self.self_attn.key_value(h)
        self_k = write_rows(layer_cache.self_k, new_k, start, axis=2)
        self_v = write_rows(layer_cache.self_v, new_v, start, axis=2)
        x = x + _dropout(self.self_attn(h, self_k, self_v, mask), dropout, 0)
        h = self.encoder_attn_layer_norm(x)
        cross = self.encoder_attn(h, layer_cache.cross_k, layer_cache.cross_v, mask=None)
        x = x + _dropout(cross, dropout, 1)
        x = x + _dropout(_feed_forward(self, self.final_layer_norm(x)), dropout, 2)
        return x, layer_cache._replace(self_k=self_k, self_v=self_v)


def _dropout(x, dropout, branch: int):
    """Inverted dropout of x with (rate, key), a key per branch; identity when dropout is None."""
    if dropout is None:
        return x
    rate, key = dropout
    keep = jax.random.bernoulli(jax.random.fold_in(key, branch), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def write_rows(buffer, update, start, axis: int = 1):
    """Writes `update` into `buffer` along `axis` at a per-row offset start [B] (axis 0 = rows)."""

    def write_row(row_buffer, row_update, row_start):
        offsets = [0] * row_buffer.ndim
        offsets[axis - 1] = row_start
        return jax.lax.dynamic_update_slice(
            row_buffer, row_update.astype(row_buffer.dtype), offsets
        )

    return jax.vmap(write_row)(buffer, update, start)


def _maybe_remat(fn, enabled: bool):
    return nnx.remat(fn) if enabled else fn


class Encoder(nnx.Module):
    def __init__(self, config: WhisperConfig, *, dtype, param_dtype, remat, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.d_model
        self.config = config
        self.remat = remat
        self.dtype = dtype
        self.conv1 = nnx.Conv(config.num_mel_bins, d, kernel_size=(3,), padding=((1, 1),), **kw)
        self.conv2 = nnx.Conv(d, d, kernel_size=(3,), strides=(2,), padding=((1, 1),), **kw)
        self.embed_positions = nnx.Param(
            jnp.asarray(sinusoids(config.max_source_positions, d), dtype=param_dtype)
        )
        self.layers = nnx.List([EncoderLayer(config, **kw) for _ in range(config.encoder_layers)])
        self.layer_norm = _layer_norm(d, **kw)

    def __call__(self, features):
        """features: log-mel [B, num_mel_bins, num_frames] (Hugging Face layout)."""
        expected = (self.config.num_mel_bins, self.config.num_frames)
        if features.ndim != 3 or tuple(features.shape[1:]) != expected:
            raise FlaxDistilError(
                f"encoder input has shape {tuple(features.shape)}; expected [batch, {expected[0]}, "
                f"{expected[1]}] log-mel features (30 s padded audio)"
            )
        x = jnp.swapaxes(features, 1, 2).astype(self.dtype)
        x = jax.nn.gelu(self.conv1(x), approximate=False)
        x = jax.nn.gelu(self.conv2(x), approximate=False)
        x = x + self.embed_positions[...].astype(x.dtype)
        run_layer = _maybe_remat(lambda layer, h: layer(h), self.remat)
        for layer in self.layers:
            x = run_layer(layer, x)
        return self.layer_norm(x)


class Decoder(nnx.Module):
    def __init__(self, config: WhisperConfig, *, dtype, param_dtype, remat, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.d_model
        self.config = config
        self.remat = remat
        self.dtype = dtype
        self.embed_tokens = nnx.Embed(config.vocab_size, d, **kw)
        self.embed_positions = nnx.Param(
            jax.random.normal(rngs.params(), (config.max_target_positions, d), param_dtype) * 0.02
        )
        self.layers = nnx.List([DecoderLayer(config, **kw) for _ in range(config.decoder_layers)])
        self.layer_norm = _layer_norm(d, **kw)

    def cross_cache(self, encoder_out, max_length: int) -> DecoderCache:
        """Projects encoder output to each layer's cross keys/values; empty self-attn buffers."""
        batch = encoder_out.shape[0]
        heads = self.config.decoder_attention_heads
        shape = (batch, heads, max_length, self.config.d_model // heads)
        dtype = self.dtype or encoder_out.dtype
        caches = []
        for layer in self.layers:
            cross_k, cross_v = layer.encoder_attn.key_value(encoder_out)
            caches.append(
                LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), cross_k, cross_v)
            )
        return tuple(caches)

    def forward(self, tokens, encoder_out, dropout_rate: float = 0.0, dropout_rng=None):
        """Teacher-forced logits [B,T,V] for tokens [B,T] from position 0 (the training pass)."""
        cache = self.cross_cache(encoder_out, tokens.shape[1])
        start = jnp.zeros((tokens.shape[0],), jnp.int32)
        dropout = (dropout_rate, dropout_rng) if dropout_rate > 0 else None
        logits, _ = self(tokens, cache, start, dropout)
        return logits

    def __call__(self, tokens, cache: DecoderCache, start, dropout=None, project=True, first=None):
        """Logits for tokens [B,T] written to cache slots start[b] + t; returns (logits, cache).
        With project=False, the final hidden states [B,T,D] instead of logits.

        `first` [B] (optional) is each row's first real slot, for rows left-padded to a common
        prompt length: slots before it are never attended and positions count from it, so a
        padded row computes exactly what the unpadded row would."""
        slots = start[:, None] + jnp.arange(tokens.shape[1])[None, :]
        positions = slots if first is None else jnp.maximum(slots - first[:, None], 0)
        scale = math.sqrt(self.config.d_model) if self.config.scale_embedding else 1.0
        x = self.embed_tokens(tokens) * scale
        x = x + jnp.take(self.embed_positions[...], positions, axis=0).astype(x.dtype)
        key_slots = jnp.arange(cache[0].self_k.shape[2])[None, None, :]
        mask = key_slots <= slots[:, :, None]  # causal over cache slots
        if first is not None:
            mask &= key_slots >= first[:, None, None]
        run_layer = _maybe_remat(lambda layer, h, c, d: layer(h, c, start, mask, d), self.remat)
        new_cache = []
        for index, (layer, layer_cache) in enumerate(zip(self.layers, cache, strict=True)):
            layer_dropout = None
            if dropout is not None:
                layer_dropout = (dropout[0], jax.random.fold_in(dropout[1], index))
            x, layer_cache = run_layer(layer, x, layer_cache, layer_dropout)
            new_cache.append(layer_cache)
        x = self.layer_norm(x)
        return (self.project(x) if project else x), tuple(new_cache)

    def project(self, x):
        """Float32 logits [..., V] of final hidden states [..., D] through the tied embedding."""
        # einsum contracts against the embedding in place; `Embed.attend` (x @ E.T)
        # materialises the transpose and was ~2.5x slower per step.
        embedding = self.embed_tokens.embedding[...].astype(x.dtype)
        return jnp.einsum("...d,vd->...v", x, embedding).astype(jnp.float32)


class Whisper(nnx.Module):
    """Whisper encoder-decoder; `dtype` is the compute dtype, `param_dtype` the storage dtype."""

    def __init__(
        self,
        config: WhisperConfig,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        self.config = config
        self.encoder = Encoder(config, **kw)
        self.decoder = Decoder(config, **kw)

    def encode(self, features):
        return self.encoder(features)

    def init_cache(self, encoder_out, max_length: int | None = None) -> DecoderCache:
        max_length = max_length or self.config.max_target_positions
        if max_length > self.config.max_target_positions:
            raise FlaxDistilError(
                f"max_length {max_length} exceeds the decoder's "
                f"{self.config.max_target_positions} positions"
            )
        return self.decoder.cross_cache(encoder_out, max_length)

    def decode_step(self, tokens, cache: DecoderCache, start, project=True, first=None):
        """Incremental decoding: tokens [B,T] at per-row cache slots start [B]; returns (logits,
        or final hidden states with project=False, and the cache). `first` [B]: each row's
        first real slot when prompts are left-padded (see `Decoder.__call__`)."""
        start = jnp.asarray(start, jnp.int32)
        return self.decoder(tokens, cache, start, project=project, first=first)

    def decode(self, tokens, encoder_out):
        """Teacher-forced logits [B,T,V] for tokens [B,T] starting at position 0."""
        if tokens.shape[1] > self.config.max_target_positions:
            raise FlaxDistilError(
                f"{tokens.shape[1]} tokens exceed the decoder's "
                f"{self.config.max_target_positions} positions"
            )
        return self.decoder.forward(tokens, encoder_out)

    def __call__(self, features, tokens):
        return self.decode(tokens, self.encode(features))
