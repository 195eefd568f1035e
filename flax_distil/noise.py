"""Noise for robustness tests: white noise or babble, mixed into speech at a signal-to-noise ratio.

Used by `evaluate --noise` (WER per SNR level) and `make-demo-data --noise` (noisy demo sets).
Noise for clip i is drawn from a generator seeded by (seed, i), so every SNR level, model and
run hears the same noise.
"""

from __future__ import annotations

import numpy as np

from flax_distil.errors import FlaxDistilError

NOISE_KINDS = ("white", "babble")


def noise_for(kind: str, index: int, clips: list[np.ndarray], seed: int = 0) -> np.ndarray:
    """Noise as long as clip `index`: white, or babble (up to four other clips summed)."""
    rng = np.random.default_rng([seed, index])
    length = len(clips[index])
    if kind == "white":
        return rng.standard_normal(length).astype(np.float32)
    if kind != "babble":
        raise FlaxDistilError(f"unknown noise {kind!r}; use one of {', '.join(NOISE_KINDS)}")
    others = [i for i in range(len(clips)) if i != index]
    if not others:
        raise FlaxDistilError("babble noise needs at least two utterances")
    talkers = rng.choice(others, size=min(4, len(others)), replace=False)
    return np.sum([np.resize(clips[i], length) for i in talkers], axis=0).astype(np.float32)


def mix_noise(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """clean + noise scaled so that the signal-to-noise power ratio is `snr_db`."""
    noise = np.resize(noise, clean.shape)
    clean_power, noise_power = np.mean(clean**2), np.mean(noise**2)
    scale = np.sqrt(clean_power / (noise_power * 10 ** (snr_db / 10))) if noise_power else 0.0
    return (clean + scale * noise).astype(np.float32)
