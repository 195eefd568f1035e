"""Pseudo-labelling a streaming source shard by shard, restartably, without knowing its length.

A streaming source (`SourceSpec(streaming=True)`, a `datasets.IterableDataset`) has no length,
but it has shards: one per parquet file of a directory, one per data file of a hub dataset
(`num_shards`), which `shard(num_shards, k)` reads alone, in order. Output shard k is source
shard k, written as parts of S rows: `shard-00003-of-00008.part-00000.parquet`, `.part-00001`,
...; process i of N labels the source shards k with k % N == i, as with map-style shards.

Each part is written atomically (`flax_distil.pseudo_label_files`) and its metadata records the
rows it read and whether it is the shard's last (the stream ended after it). A rerun of the same
command skips the shards whose last part exists, and resumes any other after its finished parts:
their rows are skipped in the stream (read, not decoded or labelled) and the part that was being
written when the job died is labelled again. Every row lands in exactly one part.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from flax_distil.data.sources import Source
from flax_distil.errors import FlaxDistilError
from flax_distil.pseudo_label_files import shard_stats, write_shard


class SourceShards:
    """A streaming source's output: output shard k is source shard k, in parts of S rows."""

    def __init__(self, source: Source, output: Path, shard_size: int):
        self.source, self.output, self.shard_size = source, output, shard_size
        self.count = source.table.num_shards
        if self.count == 0:
            raise FlaxDistilError(f"{source.spec.path}: the dataset has no data files")

    def manifest(self) -> dict:
        return {"streaming": True, "shards": self.count}

    def _name(self, shard: int) -> str:
        return f"shard-{shard:05d}-of-{self.count:05d}"

    def part_path(self, shard: int, part: int) -> Path:
        return self.output / f"{self._name(shard)}.part-{part:05d}.parquet"

    def parts(self, shard: int) -> list[Path]:
        """The shard's finished parts, in order (always 0, 1, ...: one process writes them)."""
        parts = sorted(self.output.glob(f"{self._name(shard)}.part-*.parquet"))
        if parts != [self.part_path(shard, part) for part in range(len(parts))]:
            raise FlaxDistilError(
                f"{self.output}: the parts of {self._name(shard)} are not numbered 0, 1, ...; "
                "were files removed? use a new --output"
            )
        return parts

    def done(self, shard: int) -> bool:
        parts = self.parts(shard)
        return bool(parts) and shard_stats(parts[-1])["last"]

    def todo(self, index: int, count: int) -> list[int]:
        return [k for k in range(index, self.count, count) if not self.done(k)]

    def rows_in(self, shards: list[int]) -> None:
        return None  # a stream's length is unknown until it is read

    def label(self, job, shard: int) -> tuple[int, float]:
        """Labels the rest of one source shard, part by part; returns (rows, audio seconds)."""
        finished = self.parts(shard)
        offset = sum(shard_stats(path)["rows"] for path in finished)
        stream = self.source.table.shard(self.count, shard).skip(offset)
        name = f"{self.source.spec.path}#{self._name(shard)}"
        rows = ((row, f"{name}.row{n}") for n, row in enumerate(stream, offset))
        head = next(rows, None)  # read one row ahead: a part knows whether it is the last
        part, rows_read, audio_seconds = len(finished), 0, 0.0
        while True:
            ahead = [] if head is None else [head]  # an empty shard: one empty, last part
            piece = itertools.islice(itertools.chain(ahead, rows), self.shard_size)
            labelled, stats = job.label_rows(piece)
            head = next(rows, None)
            stats = {"shard": shard, "part": part, "last": head is None, **stats}
            write_shard(self.part_path(shard, part), labelled, job.schema, stats)
            rows_read += stats["rows"]
            audio_seconds += stats["audio_seconds"]
            if head is None:
                return rows_read, audio_seconds
            part += 1

    def paths(self) -> list[Path]:
        unfinished = [k for k in range(self.count) if not self.done(k)]
        if unfinished:
            raise FlaxDistilError(
                f"{len(unfinished)} of {self.count} source shards are unfinished (e.g. "
                f"{self._name(unfinished[0])}); did a process fail? rerun the same command "
                "to finish them"
            )
        return [path for shard in range(self.count) for path in self.parts(shard)]
