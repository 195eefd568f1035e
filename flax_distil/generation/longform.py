"""Long-form transcription (audio over 30 s), both ways Distil-Whisper offers.

- Chunked: overlapping windows decoded as one batch, their token sequences stitched where the
  overlaps agree. Fast (every window at once), the mode Distil-Whisper recommends for its
  students, with its best chunk length of 15 s as the default (on long windows without
  timestamps, small models tend to drop sentences).
- Sequential: OpenAI's algorithm: decode a 30 s window with timestamps, move the window to the
  last complete segment's end timestamp, prompting with the tokens decoded so far (timestamps
  included, as OpenAI and faster-whisper do: conditioned on plain text, Whisper drifts into
  windows without timestamps, and such a window is consumed whole).
"""

from __future__ import annotations

import itertools

import numpy as np

from flax_distil.audio import N_SAMPLES, SAMPLE_RATE, batch_audio
from flax_distil.errors import FlaxDistilError
from flax_distil.generation.batching import prompt_width
from flax_distil.tokenizer import DEFAULT_MAX_NEW_TOKENS, SECONDS_PER_TIMESTAMP

SAMPLES_PER_TIMESTAMP = int(SECONDS_PER_TIMESTAMP * SAMPLE_RATE)  # 320


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
    return {"text": transcriber.text(tokens), "tokens": tokens, "windows": len(windows), **stats}


def previous_text_prompt(transcriber, previous: list[int], start_tokens: list[int]) -> list[int]:
    """OpenAI's prompt for the next window: <|startofprev|>, the last tokens decoded so far
    (timestamps included; at most half the decoder's positions minus one), the start tokens."""
    if not previous:
        return list(start_tokens)
    cap = transcriber.config.max_target_positions // 2 - 1
    return [transcriber.special.start_of_prev, *previous[-cap:], *start_tokens]


def _segments_of_window(row, begin):
    """OpenAI's split of one window's tokens: (segments as (start s, end s or None, tokens),
    samples consumed or None for the whole window)."""
    is_timestamp = [t >= begin for t in row]
    single_ending = len(row) >= 2 and not is_timestamp[-2] and is_timestamp[-1]
    cuts = [i for i in range(1, len(row)) if is_timestamp[i] and is_timestamp[i - 1]]
    if not cuts:
        stamps = [t for t in row if t >= begin]
        end = (
            (stamps[-1] - begin) * SECONDS_PER_TIMESTAMP if stamps and stamps[-1] > begin else None
        )
        return [(0.0, end, row)], None
    if single_ending:
        cuts.append(len(row))
    segments, last = [], 0
    for cut in cuts:
        piece = row[last:cut]
        start = (piece[0] - begin) * SECONDS_PER_TIMESTAMP
        end = (piece[-1] - begin) * SECONDS_PER_TIMESTAMP
        segments.append((start, end, piece))
        last = cut
    # Without a final lone timestamp the text after the last pair is unfinished: the next
    # window starts at the last pair's time.
    consumed = None if single_ending else (row[last - 1] - begin) * SAMPLES_PER_TIMESTAMP
    return segments, consumed


def transcribe_sequential(
    transcriber,
    audio: np.ndarray,
    *,
    language: str | None = None,
    task: str = "transcribe",
    condition_on_previous: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    num_draft: int = 0,
) -> dict:
    """OpenAI's sequential long-form transcription with timestamped segments.

    Each 30 s window is decoded with timestamps; its complete segments are kept and the next
    window starts at the last complete segment's end (or after the window when it ends with a
    lone timestamp or has no timestamp pair). With `condition_on_previous`, the prompt carries
    the tokens kept so far, timestamps included. Segments without text or duration are
    dropped from the text and the prompt. One difference from OpenAI, on purpose: a window
    whose last complete segment ends at 0.00 s is passed over whole (OpenAI would decode the
    same window again)."""
    eos = transcriber.config.eos_token_id
    begin = transcriber.special.timestamp_begin
    # A multilingual model without a language detects it on the first window and keeps it for
    # the whole file, as OpenAI's `transcribe` does.
    start_tokens = transcriber.start_tokens(
        audio[:N_SAMPLES], language=language, task=task, timestamps=True
    )
    seek, all_tokens, segments = 0, [], []
    while seek < len(audio):
        window = audio[seek : seek + N_SAMPLES]
        previous = all_tokens if condition_on_previous else []
        prompt = previous_text_prompt(transcriber, previous, start_tokens)
        slots = prompt_width(len(prompt), transcriber.config.max_target_positions)
        generated = transcriber.generate_audio(
            batch_audio([window]),
            prompts=[prompt],
            timestamps=True,
            max_new_tokens=min(max_new_tokens, transcriber.max_new_tokens_limit(slots, num_draft)),
            num_draft=num_draft,
        )
        row = _text_tokens(generated.rows()[0], eos)
        offset = seek / SAMPLE_RATE
        pieces, consumed = _segments_of_window(row, begin)
        for start, end, piece in pieces:
            end = len(window) / SAMPLE_RATE if end is None else end
            text = transcriber.text(piece)
            if text and end > start:
                segments.append(
                    {"start": round(offset + start, 2), "end": round(offset + end, 2), "text": text}
                )
                all_tokens += piece
        seek += consumed if consumed else len(window)
    text = " ".join(segment["text"] for segment in segments)
    return {"text": text, "tokens": all_tokens, "segments": segments}
