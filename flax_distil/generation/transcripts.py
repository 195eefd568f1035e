"""From clips to transcripts: the one decoding path that every command shares.

`transcribe`, `evaluate`, `compare`, `pseudo-label`, the demo and evaluation during training all
call `Transcriber.transcribe(clips, options)`: clips of up to 30 s are decoded in batches of
`options.batch_size` (in order), longer ones with long-form decoding (`longform.py`), and each
clip gets a `Transcript`: its text, its tokens without end-of-text, timestamped segments when
asked, whether decoding finished within the token limit, the speculative-decoding counts and
its share of the decoding time.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from tqdm import tqdm

from flax_distil.audio import N_SAMPLES, batch_audio
from flax_distil.generation.longform import transcribe_chunked
from flax_distil.generation.options import DecodeOptions
from flax_distil.generation.sequential import transcribe_sequential


@dataclasses.dataclass
class Transcript:
    text: str
    tokens: list[int]  # without the prompt and end-of-text (timestamps kept)
    segments: list[dict] | None = None  # with timestamps: {"start", "end", "text"}
    windows: list[dict] | None = None  # sequential long-form: each window's decoding
    finished: bool = True  # decoding reached end-of-text within max_new_tokens
    verifications: int = 0  # speculative decoding: teacher verifications
    accepted_drafts: int = 0  # speculative decoding: draft tokens kept
    seconds: float = 0.0  # decoding time: its batch's wall time over the batch's clips


def short_batches(clips: list[np.ndarray], batch_size: int) -> list[list[int]]:
    """Indices of the clips of up to 30 s, in batches of `batch_size`, in order."""
    short = [i for i, clip in enumerate(clips) if len(clip) <= N_SAMPLES]
    return [short[first : first + batch_size] for first in range(0, len(short), batch_size)]


def transcribe_clips(
    transcriber, clips: list[np.ndarray], options: DecodeOptions, progress: str | None = None
) -> list[Transcript]:
    """The clips' transcripts in order; `progress`: show a progress bar with that title."""
    transcripts: list[Transcript | None] = [None] * len(clips)
    eos = transcriber.config.eos_token_id
    bar = tqdm(total=len(clips), desc=progress, unit="clip", leave=False, disable=not progress)
    for batch in short_batches(clips, options.batch_size):
        started = time.perf_counter()
        generated = transcriber.generate_audio(
            batch_audio([clips[i] for i in batch]),
            timestamps=options.timestamps,
            **options.generate_kwargs(),
        )
        rows = generated.rows()
        seconds = (time.perf_counter() - started) / len(batch)
        for position, (index, row) in enumerate(zip(batch, rows, strict=True)):
            tokens = [t for t in row if t != eos]
            transcripts[index] = Transcript(
                text=transcriber.text(tokens),
                tokens=tokens,
                segments=transcriber.segments(tokens) if options.timestamps else None,
                finished=eos in row,
                seconds=seconds,
            )
            if generated.verifications is not None:
                transcripts[index].verifications = int(generated.verifications[position])
                transcripts[index].accepted_drafts = int(generated.accepted_drafts[position])
        bar.update(len(batch))
    for index, clip in enumerate(clips):
        if transcripts[index] is None:
            transcripts[index] = _long_form(transcriber, clip, options)
            bar.update(1)
    bar.close()
    return transcripts


def _long_form(transcriber, clip: np.ndarray, options: DecodeOptions) -> Transcript:
    started = time.perf_counter()
    if options.long_form_mode == "sequential":
        out = transcribe_sequential(transcriber, clip, options)
    else:
        out = transcribe_chunked(
            transcriber,
            clip,
            chunk_seconds=options.chunk_seconds,
            batch_size=options.batch_size,
            **options.generate_kwargs(),
        )
    return Transcript(
        text=out["text"],
        tokens=out["tokens"],
        segments=out.get("segments") if options.timestamps else None,
        windows=out.get("windows"),
        verifications=out.get("verifications", 0),
        accepted_drafts=out.get("accepted_drafts", 0),
        seconds=time.perf_counter() - started,
    )
