"""Pseudo-label output files: the manifest, shard files written atomically with their counts in
the parquet metadata, and the summary over every shard.

A shard file is written to a hidden temporary name, flushed to disk and renamed into place, so
it is complete or absent. For tests of that promise, `FLAX_DISTIL_TEST_KILL_AT_PIECE=N` makes the
process SIGKILL itself just before it renames the N-th shard file it writes: N-1 files of this
run are in place and the N-th lies half-done under its temporary name.
"""

from __future__ import annotations

import collections
import json
import os
import signal
from pathlib import Path

import numpy as np

from flax_distil.errors import FlaxDistilError

# Leading underscores: readers of a parquet directory (pyarrow, pandas, DuckDB, polars, datasets)
# skip such files. Directories labelled before keep their old names, still read on a restart.
MANIFEST, SUMMARY = "_manifest.json", "_summary.json"
_OLD_MANIFEST = "manifest.json"
_STATS_KEY = b"flax_distil_shard"  # per-shard counts, in the parquet file's schema metadata
KILL_AT_PIECE = "FLAX_DISTIL_TEST_KILL_AT_PIECE"
_pieces_written = 0  # by this process, for KILL_AT_PIECE


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
    write_atomically(output / MANIFEST, json.dumps(manifest, indent=2).encode())


def write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_bytes(data)
    os.replace(temp, path)


def write_shard(path: Path, rows: list[dict], schema, stats: dict) -> None:
    """Writes a hidden temporary file, flushes it to disk, then renames it into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    global _pieces_written
    metadata = {**(schema.metadata or {}), _STATS_KEY: json.dumps(stats).encode()}
    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(metadata)
    temp = path.with_name(f".{path.name}.tmp")  # not *.parquet: parquet loaders never see it
    pq.write_table(table, temp)
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    _pieces_written += 1
    if _pieces_written == int(os.environ.get(KILL_AT_PIECE, 0)):
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(temp, path)


def shard_stats(path: Path) -> dict:
    """The counts stored in a shard file's metadata."""
    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(path).metadata[_STATS_KEY])


def write_summary(output, spec, paths, num_shards, options, wall_seconds, this_run) -> dict:
    """Totals over every shard file in `paths` (their metadata and `wer` columns) into
    _summary.json; `this_run` is (rows, audio seconds) labelled by this run."""
    import pyarrow.parquet as pq

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
    write_atomically(Path(output) / SUMMARY, json.dumps(summary, indent=2).encode())
    return summary
