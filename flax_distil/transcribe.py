"""Transcribing audio files: `flax-distil transcribe`. A file that cannot be read is reported and
skipped; the others are still transcribed (through `Transcriber.transcribe`, in batches of
files so that memory holds one batch of audio at a time)."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from flax_distil.audio import SAMPLE_RATE, load_audio
from flax_distil.errors import FlaxDistilError
from flax_distil.generation import DecodeOptions, Transcriber


def transcribe_files(
    transcriber: Transcriber, paths: list[str | Path], options: DecodeOptions
) -> tuple[list[dict], list[str]]:
    """Results in input order for the files that worked, and one error line per failed file.
    A result is {"audio", "text", "tokens", "seconds"[, "segments"][, "windows"]}: segments
    with timestamps, and each window of sequential long-form decoding (its temperature,
    log-probability, no-speech probability, whether it was skipped as silence)."""
    results, errors = [], []
    with tqdm(total=len(paths), desc="transcribing", unit="file", disable=len(paths) <= 3) as bar:
        for first in range(0, len(paths), options.batch_size):
            loaded = []
            for path in paths[first : first + options.batch_size]:
                try:
                    loaded.append((path, load_audio(path)))
                except FlaxDistilError as error:
                    errors.append(str(error))
            clips = [clip for _, clip in loaded]
            for (path, clip), transcript in zip(
                loaded, transcriber.transcribe(clips, options), strict=True
            ):
                result = {
                    "audio": str(path),
                    "text": transcript.text,
                    "tokens": transcript.tokens,
                    "seconds": round(len(clip) / SAMPLE_RATE, 3),
                }
                if options.timestamps:
                    result["segments"] = transcript.segments
                if transcript.windows is not None:
                    result["windows"] = transcript.windows
                results.append(result)
            bar.update(len(paths[first : first + options.batch_size]))
    return results, errors
