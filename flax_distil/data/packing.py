"""Packing short utterances into 30-second windows: one encoder pass serves several sentences.

Whisper's encoder always sees 30 s; a 3 s utterance leaves ~90% of that window as padding that
costs as much to encode as speech. Packing consecutive utterances of an audiofolder (with short
silences between them) into windows of up to `max_seconds`, with their transcripts joined,
cuts the encoder work per utterance several-fold for pseudo-labelling and training. Whisper
was trained on such multi-sentence windows, so the student still learns the teacher's task.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flax_distil.audio import SAMPLE_RATE, load_audio
from flax_distil.errors import FlaxDistilError


def _windows(rows, durations, max_seconds: float, gap: float, words: int, sizes: np.ndarray):
    """Consecutive groups of rows: window i takes up to sizes[i] utterances, as many as fit
    its audio (with gaps) and word budget."""
    groups, current, seconds, count = [], [], 0.0, 0
    for row, duration in zip(rows, durations, strict=True):
        length = len(row["text"].split())
        extra = duration + (gap if current else 0.0)
        full = len(current) == sizes[len(groups) % len(sizes)]
        if current and (full or seconds + extra > max_seconds or count + length > words):
            groups.append(current)
            current, seconds, count, extra = [], 0.0, 0, duration
        current.append(row)
        seconds += extra
        count += length
    if current:
        groups.append(current)
    return groups


def pack_audiofolder(
    source: str | Path,
    output: str | Path,
    *,
    max_seconds: float = 28.0,
    gap_seconds: float = 0.4,
    max_words: int = 70,
    max_utterances: int = 8,
    seed: int = 0,
) -> Path:
    """Writes `output/metadata.csv` (file_name, text, utterances) and `output/clips/*.flac`.

    Each window holds a random number of utterances, 1 to `max_utterances` (seeded): windows
    that end after one sentence teach the student to stop when the speech stops, as single
    clips need. Utterances longer than `max_seconds` get a window of their own (the data
    filters decide what to do with them); `max_words` keeps a transcript within the label
    length. Windows are numbered from the shortest transcript to the longest."""
    import soundfile

    source, output = Path(source), Path(output)
    metadata = source / "metadata.csv"
    if not metadata.is_file():
        raise FlaxDistilError(f"{source}: packing needs an audiofolder with metadata.csv")
    with metadata.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise FlaxDistilError(f"{metadata}: no rows to pack")
    clips = {
        row["file_name"]: load_audio(source / row["file_name"])
        for row in tqdm(rows, desc="reading utterances", unit="utt", leave=False)
    }
    durations = [len(clips[row["file_name"]]) / SAMPLE_RATE for row in rows]
    sizes = np.random.default_rng(seed).integers(1, max_utterances + 1, size=len(rows))
    groups = _windows(rows, durations, max_seconds, gap_seconds, max_words, sizes)
    # Shortest transcript first: a pseudo-labelling batch then holds windows that stop decoding
    # at about the same step (training shuffles them anyway).
    groups.sort(key=lambda group: sum(len(row["text"].split()) for row in group))
    silence = np.zeros(int(gap_seconds * SAMPLE_RATE), np.float32)
    (output / "clips").mkdir(parents=True, exist_ok=True)
    records = []
    for index, group in enumerate(tqdm(groups, desc="packing windows", unit="window")):
        pieces = []
        for position, row in enumerate(group):
            pieces += [silence] if position else []
            pieces.append(clips[row["file_name"]])
        name = f"clips/window{index:05d}.flac"
        soundfile.write(output / name, np.concatenate(pieces), SAMPLE_RATE)
        text = " ".join(row["text"].strip() for row in group)
        records.append((name, text, len(group)))
    with (output / "metadata.csv").open("w", newline="") as handle:  # written last: complete
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text", "utterances"])
        writer.writerows(records)
    return output
