"""The NNX Whisper on its own: incremental decoding equals the teacher-forced forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flax_distil.errors import FlaxDistilError
from flax_distil.whisper import Whisper

from .conftest import TINY_CONFIG


@pytest.fixture(scope="module")
def model():
    return Whisper(TINY_CONFIG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((3, 80, TINY_CONFIG.num_frames)).astype(np.float32)
    tokens = rng.integers(0, TINY_CONFIG.vocab_size, (3, 12)).astype(np.int32)
    return jnp.asarray(features), jnp.asarray(tokens)


def test_cached_decoding_equals_full_forward(model, inputs):
    features, tokens = inputs
    encoder_out = model.encode(features)
    full = model.decode(tokens, encoder_out)

    cache = model.init_cache(encoder_out, max_length=16)
    step = jax.jit(lambda m, t, c, s: m.decode_step(t, c, s))
    prefill, cache = step(model, tokens[:, :4], cache, jnp.zeros(3, jnp.int32))
    pieces = [prefill]
    for t in range(4, tokens.shape[1]):
        logits, cache = step(model, tokens[:, t : t + 1], cache, jnp.full(3, t, jnp.int32))
        pieces.append(logits)
    incremental = jnp.concatenate(pieces, axis=1)
    np.testing.assert_allclose(incremental, full, atol=1e-5, rtol=0)


def test_rows_at_different_positions(model, inputs):
    """Each row may sit at its own offset: row b decodes its token at position start[b]."""
    features, tokens = inputs
    encoder_out = model.encode(features)
    full = model.decode(tokens, encoder_out)
    cache = model.init_cache(encoder_out, max_length=16)
    _, cache = model.decode_step(tokens[:, :8], cache, jnp.zeros(3, jnp.int32))
    starts = jnp.array([3, 5, 7], jnp.int32)  # rows rewind to different lengths
    step_tokens = jnp.take_along_axis(tokens, starts[:, None], axis=1)
    logits, _ = model.decode_step(step_tokens, cache, starts)
    expected = jnp.take_along_axis(full, starts[:, None, None], axis=1)
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


def test_remat_changes_nothing_numerically(model, inputs):
    features, tokens = inputs
    remat_model = Whisper(TINY_CONFIG, remat_encoder=True, remat_decoder=True, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(remat_model(features, tokens), model(features, tokens), atol=1e-6)

    @nnx.jit
    def gradients(m):
        return nnx.grad(lambda m: m(features, tokens).mean())(m)

    grads, reference = gradients(remat_model), gradients(model)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_bfloat16_compute_stays_close(model, inputs):
    features, tokens = inputs
    bf16 = Whisper(TINY_CONFIG, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    params = jax.tree.leaves(nnx.state(bf16, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)  # float32 master weights
    logits = bf16(features, tokens)
    reference = model(features, tokens)
    assert logits.dtype == jnp.float32
    assert np.abs(np.asarray(logits) - np.asarray(reference)).max() < 0.1 * np.abs(reference).max()


def test_wrong_feature_shape_is_a_clear_error(model):
    with pytest.raises(FlaxDistilError, match=r"expected \[batch, 80, 3000\]"):
        model.encode(jnp.zeros((1, 80, 100)))
