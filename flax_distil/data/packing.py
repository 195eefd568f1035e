"""Packing short utterances into 30-second windows: one encoder pass serves several sentences.

Whisper's encoder always sees 30 s; a 3 s utterance leaves ~90% of that window as padding that
costs as much to encode as speech. Packing consecutive utterances of an audiofolder (with short
silences between them) into windows of up to `max_seconds`, with their transcripts joined,
cuts the encoder work per utterance several-fold for pseudo-labelling and training. Whisper
was trained on such multi-sentence windows, so the student still learns the teacher's task.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flax_distil.audio import SAMPLE_RATE, load_audio
from flax_distil.errors import FlaxDistilError


def _windows(words, durations, gaps, max_seconds: float, max_words: float, sizes: np.ndarray):
    """Consecutive groups of utterance indices: window i takes up to sizes[i] utterances, as
    many as fit its audio (with gaps[j] seconds of silence before utterance j) and word budget."""
    groups, current, seconds, count = [], [], 0.0, 0
    for index, (length, duration, gap) in enumerate(zip(words, durations, gaps, strict=True)):
        extra = duration + (gap if current else 0.0)
        full = len(current) == sizes[len(groups) % len(sizes)]
        if current and (full or seconds + extra > max_seconds or count + length > max_words):
            groups.append(current)
            current, seconds, count, extra = [], 0.0, 0, duration
        current.append(index)
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
    gap_seconds: float | tuple[float, float] = 0.4,
    max_words: int | None = 70,
    max_utterances: int | None = 8,
    seed: int = 0,
) -> Path:
    """Writes `output/metadata.csv` (file_name, text, utterances) and `output/clips/*.flac`.

    Each window holds a random number of utterances, 1 to `max_utterances` (seeded): windows
    that end after one sentence teach the student to stop when the speech stops, as single
    clips need. Utterances longer than `max_seconds` get a window of their own (the data
    filters decide what to do with them); `max_words` keeps a transcript within the label
    length. `gap_seconds` is the silence between utterances, or a (low, high) range to draw
    each gap from. None lifts a cap: `max_seconds=120, gap_seconds=(0.3, 1.2),
    max_words=None, max_utterances=None` joins read sentences into two-minute recordings
    for long-form evaluation. Windows are numbered from the shortest transcript to the
    longest."""
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
    rng = np.random.default_rng(seed)
    if max_utterances is None:
        sizes = np.asarray([len(rows)])
    else:
        sizes = rng.integers(1, max_utterances + 1, size=len(rows))
    low, high = gap_seconds if isinstance(gap_seconds, tuple) else (gap_seconds, gap_seconds)
    gaps = rng.uniform(low, high, size=len(rows))
    words = [len(row["text"].split()) for row in rows]
    word_cap = math.inf if max_words is None else max_words
    groups = _windows(words, durations, gaps, max_seconds, word_cap, sizes)
    # Shortest transcript first: a pseudo-labelling batch then holds windows that stop decoding
    # at about the same step (training shuffles them anyway).
    groups.sort(key=lambda group: sum(words[i] for i in group))
    (output / "clips").mkdir(parents=True, exist_ok=True)
    records = []
    for index, group in enumerate(tqdm(groups, desc="packing windows", unit="window")):
        pieces = []
        for position, row_index in enumerate(group):
            silence = np.zeros(int(gaps[row_index] * SAMPLE_RATE), np.float32)
            pieces += [silence] if position else []
            pieces.append(clips[rows[row_index]["file_name"]])
        name = f"clips/window{index:05d}.flac"
        soundfile.write(output / name, np.concatenate(pieces), SAMPLE_RATE)
        text = " ".join(rows[i]["text"].strip() for i in group)
        records.append((name, text, len(group)))
    with (output / "metadata.csv").open("w", newline="") as handle:  # written last: complete
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text", "utterances"])
        writer.writerows(records)
    return output
