"""Model FLOPs of the distillation step, counted from the Whisper shapes, and the matmul peak.

Model FLOPs utilisation (MFU) = counted FLOPs per second of the global batch / the peak of all
the job's devices (a device's peak: the FLOP/s of a large matmul measured on it). Only
matmul-like work is counted (projections, attention scores and mixing, convolutions, the
vocabulary projection), at 2 FLOPs per multiply-add; padded label positions count, since they
are computed.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from flax_distil.whisper import WhisperConfig


def encoder_flops(config: WhisperConfig) -> float:
    """Forward FLOPs of the encoder for one example (30 s of audio)."""
    d, frames, positions = config.d_model, config.num_frames, config.max_source_positions
    convs = 2 * 3 * config.num_mel_bins * d * frames + 2 * 3 * d * d * positions
    layer = (
        2 * 4 * positions * d * d  # q, k, v, out projections
        + 2 * 2 * positions * positions * d  # scores and mixing
        + 2 * 2 * positions * d * config.encoder_ffn_dim  # fc1, fc2
    )
    return convs + config.encoder_layers * layer


def decoder_flops(config: WhisperConfig, length: int) -> float:
    """Teacher-forced forward FLOPs of the decoder for one example of `length` tokens."""
    d, source = config.d_model, config.max_source_positions
    layer = (
        2 * 4 * length * d * d  # self-attention projections
        + 2 * 2 * length * length * d  # self-attention scores and mixing
        + 2 * 2 * length * d * d  # cross-attention query and output projections
        + 2 * 2 * source * d * d  # cross-attention keys and values of the encoder output
        + 2 * 2 * length * source * d  # cross-attention scores and mixing
        + 2 * 2 * length * d * config.decoder_ffn_dim  # fc1, fc2
    )
    return config.decoder_layers * layer + 2 * length * d * config.vocab_size


def train_step_flops(
    student: WhisperConfig,
    teacher: WhisperConfig,
    batch: int,
    length: int,
    kl: bool = True,
    encoder: bool = True,
    train_encoder: bool = False,
    teacher_encoder: bool = False,
) -> float:
    """FLOPs of one distillation step: the student's encoder forward (unless its outputs are
    cached), and its backward too (2x forward) when it is trained; the student decoder's forward
    and backward; for the KL term the teacher decoder's forward, and the teacher's own encoder
    when it is not the student's."""
    per_example = (1 + 2 * train_encoder) * encoder * encoder_flops(student)
    per_example += 3 * decoder_flops(student, length)
    if kl:
        per_example += decoder_flops(teacher, length) + teacher_encoder * encoder_flops(teacher)
    return batch * per_example


def matmul_flops_per_second(size: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul on the default device, as XLA runs it (median of
    `repeats` timed runs after a warm-up)."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a, a).block_until_ready()
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times)


def model_flops_utilisation(
    flops_per_step: float, seconds_per_step: float, peak_per_device: float, device_count: int
) -> float:
    """MFU of a step whose `flops_per_step` (the whole global batch) ran on `device_count`
    devices in `seconds_per_step`: the global FLOP rate over the global peak. The same step
    reports the same MFU however its devices are split into processes."""
    return flops_per_step / seconds_per_step / (peak_per_device * device_count)
