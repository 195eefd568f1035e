"""Chunked long-form transcription (audio over 30 s): overlapping windows decoded as one batch,
their token sequences stitched where the overlaps agree.

Fast (every window at once), the mode Distil-Whisper recommends for its students, with its best
chunk length of 15 s as the default (on long windows without timestamps, small models tend to
drop sentences). OpenAI's sequential algorithm is in `sequential.py`.
"""

from __future__ import annotations

import itertools

import numpy as np

from flax_distil.audio import N_SAMPLES, SAMPLE_RATE, batch_audio
from flax_distil.errors import FlaxDistilError


def _text_tokens(row: list[int], eos: int) -> list[int]:
    return [t for t in row if t != eos]


def merge_overlapping(sequences: list[list[int]], max_overlap_fraction: float = 1.0) -> list[int]:
    """Joins token sequences of overlapping windows.

    Each window is aligned with the previous window only (never with earlier text, which may
    repeat it): the alignment is the overlap of at most `max_overlap_fraction` of the previous
    window's tokens where the two agree best (at least two matching tokens); the text switches
    windows halfway through that overlap. Without such an overlap, windows are concatenated.
    """
    merged = list(sequences[0]) if sequences else []
    for previous, sequence in itertools.pairwise(sequences):
        longest = min(len(sequence), max(2, round(len(previous) * max_overlap_fraction)))
        best_overlap, best_score = 0, 0.0
        for overlap in range(1, min(len(previous), longest) + 1):
            pairs = zip(previous[-overlap:], sequence[:overlap], strict=True)
            matches = sum(a == b for a, b in pairs)
            score = matches / overlap + overlap * 1e-6  # prefer longer overlaps on ties
            if matches >= 2 and score > best_score:
                best_overlap, best_score = overlap, score
        keep = len(merged) - best_overlap + best_overlap // 2
        merged = merged[:keep] + list(sequence[best_overlap // 2 :])
    return merged


def chunk_starts(num_samples: int, chunk: int, stride: int) -> list[int]:
    """Window starts: neighbours overlap by 2 * stride samples; the last window reaches the end."""
    step = chunk - 2 * stride
    starts = [0]
    while starts[-1] + chunk < num_samples:
        starts.append(starts[-1] + step)
    return starts


def transcribe_chunked(
    transcriber,
    audio: np.ndarray,
    *,
    chunk_seconds: float = 15.0,
    stride_seconds: float | None = None,
    batch_size: int = 8,
    **generate_kwargs,
) -> dict:
    """Text of long audio from overlapping windows decoded in batches (no timestamps)."""
    chunk = int(chunk_seconds * SAMPLE_RATE)
    if not 0 < chunk <= N_SAMPLES:
        raise FlaxDistilError(f"chunk length {chunk_seconds} s must be in (0, 30]")
    stride = int((chunk_seconds / 6 if stride_seconds is None else stride_seconds) * SAMPLE_RATE)
    if not 0 <= 2 * stride < chunk:
        raise FlaxDistilError(f"stride {stride_seconds} s must be under half the chunk length")
    windows = [audio[s : s + chunk] for s in chunk_starts(len(audio), chunk, stride)]
    eos = transcriber.config.eos_token_id
    sequences, stats = [], {"verifications": 0, "accepted_drafts": 0}
    for first in range(0, len(windows), batch_size):
        windows_audio = batch_audio(windows[first : first + batch_size])
        generated = transcriber.generate_audio(windows_audio, timestamps=False, **generate_kwargs)
        sequences += [_text_tokens(row, eos) for row in generated.rows()]
        if generated.verifications is not None:
            stats["verifications"] += int(generated.verifications.sum())
            stats["accepted_drafts"] += int(generated.accepted_drafts.sum())
    # Tokens in the shared audio of two windows: about the overlap's share of a window, padded
    # generously because speech is not spread evenly.
    tokens = merge_overlapping(sequences, max_overlap_fraction=min(1.0, 4 * stride / chunk))
    return {
        "text": transcriber.text(tokens),
        "tokens": tokens,
        "num_windows": len(windows),
        **stats,
    }
