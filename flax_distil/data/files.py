"""Per-host file shards of local sources: each host opens only its own files.

A local source (`parquet`: a file, a directory or a glob; `jsonl`: a manifest, a directory of
manifests or a glob; `audiofolder`: its metadata.csv) is a sorted list of F files. With H hosts
(jax processes) and F >= H, host h owns files h, h + H, h + 2H, ...; with F < H, file f is
shared by the hosts h with h % F == f, each reading its own contiguous range of the file's rows.
Hosts' shares are disjoint and together hold every row once. A host opens no other file:
parquet footers at setup, then a row group (only the columns the source uses) when one of its
rows is next; manifests are small (paths and text) and read whole, their audio files opened
only when an example is decoded.

`HostShard.row_order(rng)` shuffles the host's rows so that each row group is read once per
pass: its pieces (row groups) in a random order, then rows shuffled within windows of
consecutive pieces holding at least `shuffle_buffer` rows (a manifest's rows: one window).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import os

import numpy as np

from flax_distil.data.mixing import row_seconds
from flax_distil.data.sources import RawExample, Source, manifest_rows, source_files
from flax_distil.errors import FlaxDistilError


def host_share(num_files: int, process_index: int, process_count: int) -> tuple[list, int, int]:
    """(files, part, parts): the files host `process_index` reads, and, for a file shared by
    `parts` hosts (fewer files than hosts), which contiguous part of its rows is this host's."""
    if num_files >= process_count:
        return list(range(process_index, num_files, process_count)), 0, 1
    file = process_index % num_files
    return [file], process_index // num_files, len(range(file, process_count, num_files))


@dataclasses.dataclass(frozen=True)
class _Piece:
    """Consecutive rows of one file: a parquet row group (or the host's part of one), or the
    host's part of a manifest. `start` is the row (in the file) that `_group` row 0 holds."""

    file: int
    group: int | None  # parquet row group; None for a manifest
    start: int
    first: int  # the piece's first row, in the file
    count: int


class HostShard:
    """One local source's rows that this host reads (`len`, `raw(i)`, `row_order`)."""

    def __init__(self, source: Source, process_index: int = 0, process_count: int = 1):
        self.source, self.spec = source, source.spec
        self.files = source_files(self.spec)
        self.opened: list[str] = []  # every file this host opened, in order (tests check them)
        self._columns_of, self._manifests = {}, {}  # parquet file -> its columns to read
        self._groups = collections.OrderedDict()  # (file, row group) -> rows, least recent first
        self._capacity = 1
        indices, part, parts = host_share(len(self.files), process_index, process_count)
        self._pieces = [piece for index in indices for piece in self._pieces_of(index, part, parts)]
        self._ends = np.cumsum([piece.count for piece in self._pieces]).tolist()
        self._base = os.path.commonpath(self.files) if len(self.files) > 1 else None

    def _pieces_of(self, index: int, part: int, parts: int) -> list[_Piece]:
        """The pieces of file `index` in rows [part * n // parts, (part + 1) * n // parts)."""
        if self.spec.kind != "parquet":
            rows = self._open_manifest(index)
            low, high = part * len(rows) // parts, (part + 1) * len(rows) // parts
            self._manifests[index] = rows[low:high]
            return [_Piece(index, None, low, low, high - low)] if high > low else []
        with self._open_parquet(index) as parquet:
            metadata = parquet.metadata
            names = parquet.schema_arrow.names
        if not self._columns_of:
            self.source.check_columns(names)
        self._columns_of[index] = [name for name in names if name in self._columns()]
        low = part * metadata.num_rows // parts
        high = (part + 1) * metadata.num_rows // parts
        pieces, start = [], 0
        for group in range(metadata.num_row_groups):
            stop = start + metadata.row_group(group).num_rows
            first, last = max(start, low), min(stop, high)
            if last > first:
                pieces.append(_Piece(index, group, start, first, last - first))
            start = stop
        return pieces

    def _open_parquet(self, index: int):
        """Opens one of this host's parquet files; closed after each use (a host may own
        thousands: only their row counts and columns are kept)."""
        import pyarrow.parquet as pq

        self.opened.append(self.files[index])
        return pq.ParquetFile(self.files[index])

    def _open_manifest(self, index: int) -> list[dict]:
        self.opened.append(self.files[index])
        rows = manifest_rows(self.files[index], self.spec)
        if not self._manifests and rows:
            self.source.check_columns(rows[0])
        return rows

    def _columns(self) -> set[str]:
        spec = self.spec
        return {
            spec.audio_column,
            spec.text_column,
            spec.ground_truth_column,
            spec.wer_column,
            spec.token_ids_column,
            spec.previous_column,
            spec.previous_token_ids_column,
        } - {None}

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def raw(self, index: int) -> RawExample:
        """The host's row `index` (in the order pieces were listed) as a `RawExample`."""
        piece, row = self._locate(index)
        return self.source.raw_example(
            self._group(piece)[row - piece.start], self._example_id(piece.file, row)
        )

    def _locate(self, index: int) -> tuple[_Piece, int]:
        """The piece holding the host's row `index`, and that row's number in its file."""
        number = bisect.bisect_right(self._ends, index)
        piece = self._pieces[number]
        return piece, piece.first + index - (self._ends[number] - piece.count)

    def _example_id(self, file: int, row: int) -> str:
        if self._base is None:  # one file: the row, as the map-style source names it
            return f"{self.spec.path}#{row}"
        return f"{self.spec.path}#{os.path.relpath(self.files[file], self._base)}:{row}"

    def _group(self, piece: _Piece) -> list[dict]:
        """The rows of the piece's row group (or manifest part), kept for the current window."""
        if piece.group is None:
            return self._manifests[piece.file]
        key = (piece.file, piece.group)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        with self._open_parquet(piece.file) as parquet:
            rows = parquet.read_row_group(piece.group, columns=self._columns_of[piece.file])
        rows = rows.to_pylist()
        self._groups[key] = rows
        while len(self._groups) > self._capacity:
            self._groups.popitem(last=False)
        return rows

    def row_order(self, rng: np.random.Generator) -> np.ndarray:
        """A permutation of the host's rows that reads each row group once: pieces shuffled,
        then rows shuffled within windows of consecutive pieces of >= `shuffle_buffer` rows."""
        counts = [piece.count for piece in self._pieces]
        starts = [end - count for end, count in zip(self._ends, counts, strict=True)]
        buffer = self.spec.shuffle_buffer if self.spec.kind == "parquet" else len(self)
        order, window, filled, most = [], [], 0, 1
        for piece in rng.permutation(len(self._pieces)):
            window.append(np.arange(starts[piece], starts[piece] + counts[piece]))
            filled += counts[piece]
            if filled >= buffer:
                most = max(most, len(window))
                order.append(rng.permutation(np.concatenate(window)))
                window, filled = [], 0
        if window:
            most = max(most, len(window))
            order.append(rng.permutation(np.concatenate(window)))
        self._capacity = max(self._capacity, most)
        return np.concatenate(order) if order else np.zeros(0, np.int64)

    def mean_seconds(self) -> float:
        """The mean audio duration of the host's rows (for `weight_by: hours`): the duration
        column alone is read from parquet; a manifest row's audio file header otherwise."""
        column = self.spec.duration_column
        seconds = []
        for piece in self._pieces:
            if piece.group is None:
                rows = self._manifests[piece.file]
                part = rows[piece.first - piece.start : piece.first - piece.start + piece.count]
                seconds.extend(row_seconds(row, self.spec) for row in part)
                continue
            with self._open_parquet(piece.file) as parquet:
                if column not in parquet.schema_arrow.names:
                    raise FlaxDistilError(
                        f"source {self.spec.path}: weight_by: hours needs a {column!r} column "
                        "in its parquet files (set duration_column)"
                    )
                values = parquet.read_row_group(piece.group, columns=[column]).column(0)
            offset = piece.first - piece.start
            seconds.extend(values.slice(offset, piece.count).to_pylist())
        return float(np.mean(np.asarray(seconds, np.float64))) if seconds else 0.0
