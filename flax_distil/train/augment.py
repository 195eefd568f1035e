"""SpecAugment on the device: time and frequency masks on the log-mel features of a train step.

distil-large-v3.5 trained with SpecAugment; the masks here follow `transformers`' Whisper
(`mask_time_prob` 0.05 with spans of 10 frames, at least 2 spans; frequency masks off by
default): each row gets `max(min_masks, int(prob * length / span))` spans at random starts
(they may overlap), and masked values become 0. The masks are drawn inside the compiled step
from the step's key, so they are the same on every device and on a resumed run, and the one
masked input feeds the frozen encoder that both teacher and student read. Evaluation never
masks.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SpecAugment:
    """Settings (`data.spec_augment` in the training config)."""

    enabled: bool = False
    time_mask_prob: float = 0.05  # share of the frames that start a time mask
    time_mask_length: int = 10  # frames per time mask (10 ms each)
    min_time_masks: int = 2
    feature_mask_prob: float = 0.0  # share of the mel bins that start a frequency mask
    feature_mask_length: int = 10  # mel bins per frequency mask
    min_feature_masks: int = 0


def _spans(key, rows: int, length: int, prob: float, span: int, minimum: int) -> jax.Array:
    """[rows, length] booleans: True inside one of the row's random spans."""
    count = max(minimum, int(prob * length / span))
    if count == 0 or span == 0:
        return jnp.zeros((rows, length), bool)
    span = min(span, length)
    starts = jax.random.randint(key, (rows, count), 0, length - span + 1)
    positions = jnp.arange(length)[None, None, :]
    inside = (positions >= starts[..., None]) & (positions < starts[..., None] + span)
    return inside.any(axis=1)


def masks(key, shape: tuple[int, int, int], settings: SpecAugment):
    """(time mask [B, frames], frequency mask [B, mels]) for features of `shape`."""
    rows, mels, frames = shape
    time_key, feature_key = jax.random.split(key)
    time = _spans(
        time_key,
        rows,
        frames,
        settings.time_mask_prob,
        settings.time_mask_length,
        settings.min_time_masks,
    )
    feature = _spans(
        feature_key,
        rows,
        mels,
        settings.feature_mask_prob,
        settings.feature_mask_length,
        settings.min_feature_masks,
    )
    return time, feature


def spec_augment(features: jax.Array, key, settings: SpecAugment) -> jax.Array:
    """Log-mel features [B, mels, frames] with their time and frequency masks set to 0."""
    time, feature = masks(key, features.shape, settings)
    masked = time[:, None, :] | feature[:, :, None]
    return jnp.where(masked, jnp.zeros((), features.dtype), features)
