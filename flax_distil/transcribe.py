"""Transcribing audio files: batching short clips, long-form for long ones, per-file errors.

Used by `flax-distil transcribe`. A file that cannot be read is reported and skipped; the
others are still transcribed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flax_distil.audio import N_SAMPLES, SAMPLE_RATE, batch_audio, load_audio, log_mel
from flax_distil.errors import FlaxDistilError
from flax_distil.generation import Transcriber
from flax_distil.generation.longform import transcribe_chunked, transcribe_sequential
from flax_distil.tokenizer import DEFAULT_MAX_NEW_TOKENS

LONG_FORM_MODES = ("chunked", "sequential")


@dataclasses.dataclass
class TranscribeOptions:
    batch_size: int = 8
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    timestamps: bool = False
    language: str | None = None
    long_form: str | None = None  # default: sequential with timestamps, chunked without
    num_draft: int = 0

    def __post_init__(self):
        if self.batch_size < 1:
            raise FlaxDistilError("--batch-size must be at least 1")
        if self.long_form not in (None, *LONG_FORM_MODES):
            raise FlaxDistilError(f"--long-form must be one of {', '.join(LONG_FORM_MODES)}")
        if self.timestamps and self.long_form == "chunked":
            raise FlaxDistilError(
                "chunked long-form gives no timestamps; use --long-form sequential"
            )
        if self.long_form is None:
            self.long_form = "sequential" if self.timestamps else "chunked"


def _short_results(transcriber, paths, clips, options):
    features = log_mel(batch_audio(clips), transcriber.config.num_mel_bins)
    generated = transcriber.generate(
        features,
        language=options.language,
        timestamps=options.timestamps,
        max_new_tokens=options.max_new_tokens,
        num_draft=options.num_draft,
    )
    eos = transcriber.config.eos_token_id
    results = []
    for path, clip, row in zip(paths, clips, generated.rows(), strict=True):
        tokens = [t for t in row if t != eos]
        result = {
            "audio": str(path),
            "text": transcriber.text(tokens),
            "tokens": tokens,
            "seconds": round(len(clip) / SAMPLE_RATE, 3),
        }
        if options.timestamps:
            result["segments"] = transcriber.segments(tokens)
        results.append(result)
    return results


def _long_result(transcriber, path, clip, options):
    decoding = dict(
        language=options.language,
        max_new_tokens=options.max_new_tokens,
        num_draft=options.num_draft,
    )
    if options.long_form == "sequential":
        out = transcribe_sequential(transcriber, clip, **decoding)
    else:
        out = transcribe_chunked(transcriber, clip, batch_size=options.batch_size, **decoding)
    result = {
        "audio": str(path),
        "text": out["text"],
        "tokens": out["tokens"],
        "seconds": round(len(clip) / SAMPLE_RATE, 3),
    }
    if options.timestamps:
        result["segments"] = out["segments"]
    return result


def transcribe_files(
    transcriber: Transcriber, paths: list[str | Path], options: TranscribeOptions
) -> tuple[list[dict], list[str]]:
    """Results in input order for the files that worked, and one error line per failed file."""
    results: dict[int, dict] = {}
    errors: list[str] = []
    pending: list[tuple[int, Path, np.ndarray]] = []

    progress = tqdm(total=len(paths), desc="transcribing", unit="file", disable=len(paths) <= 3)

    def flush():
        if pending:
            indices, files, clips = zip(*pending, strict=True)
            batch = _short_results(transcriber, files, list(clips), options)
            results.update(zip(indices, batch, strict=True))
            progress.update(len(pending))
            pending.clear()

    for index, path in enumerate(paths):
        try:
            clip = load_audio(path)
        except FlaxDistilError as error:
            errors.append(str(error))
            progress.update(1)
            continue
        if len(clip) > N_SAMPLES:
            results[index] = _long_result(transcriber, path, clip, options)
            progress.update(1)
            continue
        pending.append((index, Path(path), clip))
        if len(pending) == options.batch_size:
            flush()
    flush()
    progress.close()
    return [results[i] for i in sorted(results)], errors
