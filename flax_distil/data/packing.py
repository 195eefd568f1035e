"""Packing utterances into windows of up to 30 s: one encoder pass serves several sentences, and
a window's previous window gives the previous-text prompt (Distil-Whisper v3's recipe).

    flax-distil pack --dataset SOURCE --output DIR --group-column speaker_id [--max-seconds 30]

Whisper's encoder always sees 30 s; a 3 s utterance leaves ~90% of that window as padding that
costs as much to encode as speech. `pack` reads any source in its order and joins consecutive
utterances of the same group (a speaker, a book, a recording: `group_column`) into windows of
at most `max_seconds` of audio, with `gap_seconds` of silence between utterances; a new group
always starts a new window. It writes parquet shards (`shard-00000.parquet`, ...) with the
window's audio as FLAC, its utterances' text joined in `text`, the group, `utterances` (how
many) and `condition_on_prev`: the text of the window before it in the same group ("" for a
group's first window). Every usable utterance is in exactly one window, in order; unusable
ones are counted by reason. Memory holds one group's run of utterances and one shard of windows
at a time (`shortest_first` holds every window, to sort them).

Speech runs past the edge of most of Whisper's 30 s windows, and OpenAI's sequential decoding
relies on it: a transcript that ends on a lone timestamp (the start of a segment the window
cuts off) moves the next window there, while one whose last segment is closed says the rest of
the window is silent and skips it. With `cut_speech`, a window that is full (the next
utterance of its group does not fit) is filled to `max_seconds` with the start of that
utterance, cut mid-speech; its text stays the whole utterances only (the teacher labels the cut
one with its start time, as Whisper was trained), and the next window begins with that
utterance whole.

Further options: `max_utterances` (each window takes a random 1 to N utterances, so the
student also learns to stop after one sentence), `max_words` (keeps a transcript within the
label length), a (low, high) `gap_seconds` range, and `shortest_first` (windows numbered from
the shortest transcript: a pseudo-labelling batch then stops decoding together).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import itertools
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flax_distil.audio import SAMPLE_RATE
from flax_distil.data.examples import ExampleFilter, Skipped, decode_example
from flax_distil.data.sources import PREVIOUS_COLUMN, Source, SourceSpec
from flax_distil.errors import FlaxDistilError


@dataclasses.dataclass(frozen=True)
class PackOptions:
    group_column: str | None = None  # None: the whole source is one group
    max_seconds: float = 30.0
    gap_seconds: float | tuple[float, float] = 0.0
    max_words: int | None = None
    max_utterances: int | None = None
    shortest_first: bool = False
    cut_speech: bool = False  # fill full windows with the next utterance's start, cut off
    shard_size: int = 500  # windows per parquet file
    seed: int = 0

    def __post_init__(self):
        low, high = _gap_range(self.gap_seconds)
        if self.max_seconds <= 0 or not 0 <= low <= high or self.shard_size < 1:
            raise FlaxDistilError(
                "--max-seconds must be positive, --gap-seconds >= 0, --shard-size >= 1"
            )


def _gap_range(gap) -> tuple[float, float]:
    return tuple(gap) if isinstance(gap, tuple | list) else (gap, gap)


def _windows(words, durations, gaps, max_seconds: float, max_words: float, sizes: np.ndarray):
    """Consecutive groups of utterance indices, each with whether it closed because the next
    utterance did not fit its audio: window i takes up to sizes[i] utterances, as many as fit
    its audio (with gaps[j] seconds of silence before utterance j) and word budget."""
    groups, current, seconds, count = [], [], 0.0, 0
    for index, (length, duration, gap) in enumerate(zip(words, durations, gaps, strict=True)):
        extra = duration + (gap if current else 0.0)
        size_reached = len(current) == sizes[len(groups) % len(sizes)]
        too_long = seconds + extra > max_seconds
        if current and (size_reached or too_long or count + length > max_words):
            groups.append((current, too_long and not size_reached))
            current, seconds, count, extra = [], 0.0, 0, duration
        current.append(index)
        seconds += extra
        count += length
    if current:
        groups.append((current, False))
    return groups


def _runs(source: Source, group_column: str | None, skipped: collections.Counter):
    """Runs of consecutive usable utterances of one group: (group, [(audio, text), ...])."""
    run, group = [], None
    for index in tqdm(range(len(source)), desc="reading utterances", unit="utt", leave=False):
        row = source.table[index]  # read once: the group and the example come from it
        value = row.get(group_column) if group_column else None
        try:
            raw = source.raw_example(row, source.example_id(index))
            example = decode_example(raw, ExampleFilter(max_seconds=math.inf))
        except Skipped as error:
            skipped[error.reason] += 1
            continue
        if run and value != group:
            yield group, run
            run = []
        run.append((example.audio, example.text))
        group = value
    if run:
        yield group, run


def _pack_run(utterances, options: PackOptions, rng):
    """Windows [(audio, text, utterance count, previous window's text)] of one group's run."""
    words = [len(text.split()) for _, text in utterances]
    durations = [len(audio) / SAMPLE_RATE for audio, _ in utterances]
    if options.max_utterances is None:
        sizes = np.asarray([len(utterances)])
    else:
        sizes = rng.integers(1, options.max_utterances + 1, size=len(utterances))
    gaps = rng.uniform(*_gap_range(options.gap_seconds), size=len(utterances))
    cap = math.inf if options.max_words is None else options.max_words
    windows, previous = [], ""
    for group, full in _windows(words, durations, gaps, options.max_seconds, cap, sizes):
        pieces = []
        for position, index in enumerate(group):
            if position:
                pieces.append(np.zeros(int(gaps[index] * SAMPLE_RATE), np.float32))
            pieces.append(utterances[index][0])
        if options.cut_speech and full:
            following = group[-1] + 1
            pieces += _cut_off(pieces, utterances[following][0], gaps[following], options)
        text = " ".join(utterances[index][1] for index in group)
        windows.append((np.concatenate(pieces), text, len(group), previous))
        previous = text
    return windows


def _cut_off(pieces, following, gap_seconds: float, options: PackOptions) -> list[np.ndarray]:
    """The gap and as much of the following utterance as fills the window to `max_seconds`;
    nothing when under 0.5 s of its speech would fit."""
    gap = np.zeros(int(gap_seconds * SAMPLE_RATE), np.float32)
    room = int(options.max_seconds * SAMPLE_RATE) - sum(len(p) for p in pieces) - len(gap)
    if room < SAMPLE_RATE // 2:
        return []
    return [gap, following[:room]]


def pack(spec: SourceSpec, output: str | Path, options: PackOptions | None = None) -> dict:
    """Writes the windows as parquet shards into `output`; returns counts (utterances in,
    windows out, skipped by reason)."""
    options = options or PackOptions()
    source, output = Source(spec), Path(output)
    if options.group_column and options.group_column not in (source.table.column_names or ()):
        raise FlaxDistilError(
            f"source {spec.path}: no column {options.group_column!r} to group by; it has "
            f"{list(source.table.column_names)}"
        )
    if any(output.glob("shard-*.parquet")):
        raise FlaxDistilError(f"{output} already holds packed shards; use a new --output")
    output.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(options.seed)
    skipped, counts = collections.Counter(), {"utterances": 0, "windows": 0}

    def windows():
        for group, run in _runs(source, options.group_column, skipped):
            counts["utterances"] += len(run)
            yield from ((group, *window) for window in _pack_run(run, options, rng))

    ordered = windows()
    if options.shortest_first:  # needs every window first; otherwise one shard at a time
        ordered = sorted(ordered, key=lambda window: len(window[2].split()))  # stable
    for shard, batch in enumerate(itertools.batched(ordered, options.shard_size)):
        _write_shard(output, shard, batch, counts["windows"], options.group_column)
        counts["windows"] += len(batch)
    if not counts["windows"]:
        raise FlaxDistilError(f"{spec.path}: no usable utterance to pack ({dict(skipped)})")
    return {**counts, "skipped": dict(skipped)}


def _write_shard(output: Path, shard: int, windows, first: int, group_column: str | None):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile

    rows = []
    for offset, (group, audio, text, count, previous) in enumerate(windows):
        encoded = io.BytesIO()
        soundfile.write(encoded, audio, SAMPLE_RATE, format="FLAC")
        row = {
            "audio": {"bytes": encoded.getvalue(), "path": f"window{first + offset:06d}.flac"},
            "text": text,
            "utterances": count,
            "seconds": round(len(audio) / SAMPLE_RATE, 3),
            PREVIOUS_COLUMN: previous,
        }
        if group_column:
            row[group_column] = group
        rows.append(row)
    path = output / f"shard-{shard:05d}.parquet"
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), temporary)
    temporary.replace(path)
