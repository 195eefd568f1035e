"""Sequential long-form transcription, as OpenAI's `transcribe` does it.

The log-mel of the whole recording is computed once (one normalisation for the file, as OpenAI
and transformers do); a 30 s window of it is decoded with timestamps, its complete segments are
kept, and the next window starts at the last complete segment's end (or after the window when
it ends with a lone timestamp or has no timestamp pair). The prompt carries the tokens kept so
far, timestamps included (conditioned on plain text, Whisper drifts into windows without
timestamps, and such a window is consumed whole), cut to the last 223.

Each window is decoded at temperature 0 first; if its text's compression ratio (zlib, on the
UTF-8 text, as OpenAI; transformers measures token bytes) is above the threshold, or its average
log-probability below its threshold, it is decoded again, sampled at the next temperature
(0.2, 0.4, ... 1.0), until one passes or the temperatures run out (the last result stands). A
window whose `<|nospeech|>` probability is above its threshold while the average log-probability
is below that threshold is skipped as silence. After a window decoded above temperature 0.5 the
prompt starts afresh, as OpenAI's does. Sampling is seeded per recording: the same options give
the same transcript.

Segments without text or duration are dropped from the text and the prompt (as OpenAI does).
One difference from OpenAI, on purpose: a window whose last complete segment ends at 0.00 s is
passed over whole (OpenAI would decode the same window again).
"""

from __future__ import annotations

import dataclasses
import zlib

import jax
import numpy as np

from flax_distil.audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, log_mel
from flax_distil.generation.batching import prompt_width
from flax_distil.generation.options import DecodeOptions, Fallback
from flax_distil.tokenizer import SECONDS_PER_TIMESTAMP

SECONDS_PER_FRAME = 0.01
FRAMES_PER_TIMESTAMP = round(SECONDS_PER_TIMESTAMP / SECONDS_PER_FRAME)  # 2


def compression_ratio(text: str) -> float:
    """Bytes of UTF-8 text over bytes of its zlib compression: above ~2.4, the text repeats."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclasses.dataclass
class Attempt:
    """One decoding of one window: its tokens (end-of-text removed) and what judges them."""

    tokens: list[int]
    temperature: float
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float = 0.0
    silent: bool = False  # skipped as no speech

    def failed(self, fallback: Fallback) -> bool:
        """Whether the fallback would decode this window again at a higher temperature."""
        too_repetitive = (
            fallback.compression_ratio_threshold is not None
            and self.compression_ratio > fallback.compression_ratio_threshold
        )
        unlikely = (
            fallback.logprob_threshold is not None and self.avg_logprob < fallback.logprob_threshold
        )
        return too_repetitive or unlikely

    def log(self, seek_frames: int, attempts: int) -> dict:
        return {
            "start": round(seek_frames * SECONDS_PER_FRAME, 2),
            "temperature": self.temperature,
            "attempts": attempts,
            "avg_logprob": self.avg_logprob,
            "no_speech_prob": self.no_speech_prob,
            "compression_ratio": round(self.compression_ratio, 4),
            "skipped": self.silent,
        }


def max_prompt_tokens(config) -> int:
    """How many of the tokens decoded so far OpenAI's prompt keeps: half the decoder's
    positions minus one (223 for Whisper)."""
    return config.max_target_positions // 2 - 1


def previous_text_prompt(transcriber, previous: list[int], start_tokens: list[int]) -> list[int]:
    """OpenAI's prompt for the next window: <|startofprev|>, the last `max_prompt_tokens`
    tokens decoded so far (timestamps included), the start tokens."""
    if not previous:
        return list(start_tokens)
    cap = max_prompt_tokens(transcriber.config)
    return [transcriber.special.start_of_prev, *previous[-cap:], *start_tokens]


def decode_with_fallback(
    transcriber, features: np.ndarray, prompt: list[int], start_count: int, options, key
) -> tuple[Attempt, int]:
    """The kept decoding of one window of features [mels, 3000] after `prompt` (ending in
    `start_count` start tokens) and how many decodings were tried; `options`: DecodeOptions."""
    fallback = options.fallback
    encoder_out = transcriber.encode_rows(features[None])
    slots = prompt_width(len(prompt), transcriber.config.max_target_positions)
    eos = transcriber.config.eos_token_id
    for tried, temperature in enumerate(fallback.temperatures, start=1):
        num_draft = options.num_draft if temperature == 0 else 0
        limit = transcriber.max_new_tokens_limit(slots, num_draft)
        generated = transcriber.decode(
            encoder_out,
            1,
            prompts=[prompt],
            timestamps=True,
            max_new_tokens=min(options.max_new_tokens, limit),
            num_draft=num_draft,
            temperature=temperature,
            key=jax.random.fold_in(key, tried),
        )
        tokens = [t for t in generated.rows()[0] if t != eos]
        attempt = Attempt(tokens, temperature)
        attempt.compression_ratio = compression_ratio(transcriber.text(tokens))
        if fallback.scored:
            total, count, no_speech = transcriber.score(
                encoder_out, [prompt], generated, start_count
            )
            attempt.avg_logprob = float(total[0] / max(int(count[0]), 1))
            attempt.no_speech_prob = float(no_speech[0])
            attempt.silent = (
                fallback.no_speech_threshold is not None
                and attempt.no_speech_prob > fallback.no_speech_threshold
                and attempt.avg_logprob < fallback.logprob_threshold
            )
        if attempt.silent or not attempt.failed(fallback):
            break
    return attempt, tried


def _segments_of_window(row, begin, window_frames: int):
    """OpenAI's split of one window's tokens: (segments as (start s, end s, tokens), frames
    consumed or None for the whole window)."""
    is_timestamp = [t >= begin for t in row]
    single_ending = len(row) >= 2 and not is_timestamp[-2] and is_timestamp[-1]
    cuts = [i for i in range(1, len(row)) if is_timestamp[i] and is_timestamp[i - 1]]
    if not cuts:
        stamps = [t for t in row if t >= begin]
        if stamps and stamps[-1] > begin:
            end = (stamps[-1] - begin) * SECONDS_PER_TIMESTAMP
        else:
            end = window_frames * SECONDS_PER_FRAME
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
    consumed = None if single_ending else (row[last - 1] - begin) * FRAMES_PER_TIMESTAMP
    return segments, consumed


def closed_segment_tokens(row: list[int], begin: int) -> list[int]:
    """The tokens of a window's transcript that sequential decoding keeps, and so prompts the
    next window with: all of them, less an unfinished last segment (after the last timestamp
    pair, when the window does not end on a lone timestamp), which the next window decodes
    again."""
    pieces, _ = _segments_of_window(row, begin, N_FRAMES)
    return [token for _, _, piece in pieces for token in piece]


def transcribe_sequential(transcriber, audio: np.ndarray, options: DecodeOptions | None = None):
    """Text, tokens, timestamped segments and each window's decoding (`windows`: start,
    temperature kept, attempts, average log-probability, no-speech probability, compression
    ratio, skipped) of 16 kHz audio of any length."""
    options = options or DecodeOptions()
    begin = transcriber.special.timestamp_begin
    features, content_frames = _file_features(transcriber, audio)
    # A multilingual model without a language detects it on the first window and keeps it for
    # the whole file, as OpenAI's `transcribe` does.
    start_tokens = transcriber.start_tokens(
        _window(features, 0), language=options.language, task=options.task, timestamps=True
    )
    key = jax.random.PRNGKey(options.fallback.seed)
    seek, all_tokens, reset, segments, windows = 0, [], 0, [], []
    while seek < content_frames:
        window_frames = min(N_FRAMES, content_frames - seek)
        previous = all_tokens[reset:] if options.condition_on_previous else []
        prompt = previous_text_prompt(transcriber, previous, start_tokens)
        window_key = jax.random.fold_in(key, len(windows))
        attempt, tried = decode_with_fallback(
            transcriber, _window(features, seek), prompt, len(start_tokens), options, window_key
        )
        windows.append(attempt.log(seek, tried))
        if attempt.silent:
            seek += window_frames
            continue
        offset = seek * SECONDS_PER_FRAME
        pieces, consumed = _segments_of_window(attempt.tokens, begin, window_frames)
        for start, end, piece in pieces:
            text = transcriber.text(piece)
            if text and end > start:
                segments.append(
                    {"start": round(offset + start, 2), "end": round(offset + end, 2), "text": text}
                )
                all_tokens += piece
        seek += consumed if consumed else window_frames
        if attempt.temperature > 0.5:
            reset = len(all_tokens)
    text = " ".join(segment["text"] for segment in segments)
    return {"text": text, "tokens": all_tokens, "segments": segments, "windows": windows}


def _file_features(transcriber, audio: np.ndarray) -> tuple[np.ndarray, int]:
    """Log-mel [mels, frames] of the whole file, one normalisation for all of it, and its
    frames of content. The audio is zero-padded to a multiple of 30 s first, as OpenAI pads it
    (silence never sets the maximum the floor is taken from), so files of similar lengths share
    one compiled program."""
    audio = np.asarray(audio, np.float32)
    padded = np.zeros(-(-(len(audio) + 1) // N_SAMPLES) * N_SAMPLES, np.float32)
    padded[: len(audio)] = audio
    content_frames = len(audio) // HOP_LENGTH
    features = np.asarray(log_mel(padded[None], transcriber.config.num_mel_bins))[0]
    return features[:, :content_frames], content_frames  # windows are zero-padded past it


def _window(features: np.ndarray, seek: int) -> np.ndarray:
    """Features [mels, 3000] from frame `seek` on, zero-padded past the end (as OpenAI pads)."""
    window = features[:, seek : seek + N_FRAMES]
    return np.pad(window, [(0, 0), (0, N_FRAMES - window.shape[1])])
