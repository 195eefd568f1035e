"""Dataset sources: tables of (id, audio, text) rows with the audio undecoded.

Kinds:
- `hub`: a Hugging Face dataset (`name`, `config`, `split`) via `datasets.load_dataset`;
- `parquet`: local parquet files (a file, a directory or a glob);
- `audiofolder`: a directory with `metadata.csv` (`file_name,text[,...]`) beside the audio;
- `jsonl`: a manifest of `{"audio": path, "text": ...}` lines (paths relative to the manifest).

datasets 5 decodes audio only through torchcodec, so audio columns are read with
`Audio(decode=False)` (bytes and/or a path) and decoded by `flax_distil.data.examples`.

Sources are map-style (`len`, `[i]`, the table loaded on first use), except `hub` and `parquet`
sources with `streaming=True`: those are read as a `datasets.IterableDataset`, one pass per epoch
in a seeded shuffled order (`stream_rows`), for datasets too large to download first;
`ExampleStream` shards, mixes and resumes them as it does map-style ones. Training reads local
sources (`parquet`, `audiofolder`, `jsonl`) per host instead (`flax_distil.data.files`): a
host opens only its own files and never loads the table.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import json
import logging
from pathlib import Path

import numpy as np

from flax_distil.data.mixing import row_seconds
from flax_distil.errors import FlaxDistilError

log = logging.getLogger(__name__)

KINDS = ("hub", "parquet", "audiofolder", "jsonl")
STREAMING_KINDS = ("hub", "parquet")
LOCAL_KINDS = ("parquet", "audiofolder", "jsonl")  # lists of local files, sharded per host
WEIGHT_BY = ("rows", "hours")


PREVIOUS_COLUMN = "condition_on_prev"  # the previous window's text, as `flax-distil pack` writes
# The previous window's pseudo-label token ids (timestamps included), as `pseudo-label` writes
# them for a packed source: the prompt sequential long-form decoding gives the model.
PREVIOUS_TOKEN_IDS_COLUMN = "condition_on_prev_token_ids"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One training or evaluation source; `weight` sets its share when sources are mixed."""

    kind: str
    path: str
    config: str | None = None
    split: str = "train"
    audio_column: str = "audio"
    text_column: str = "text"
    weight: float = 1.0
    # `rows`: `weight` is the source's share of examples; `hours`: its share of audio time (rows
    # are drawn in proportion to weight / mean row duration: `duration_column` when the rows
    # have it, else each audio file's length from its header).
    weight_by: str = "rows"
    duration_column: str = "seconds"  # as `flax-distil pack` writes it
    # WER filter (Distil-Whisper keeps pseudo-labels within 10% WER of the ground truth):
    # computed against `ground_truth_column`, or read from `wer_column` (pseudo-label output).
    ground_truth_column: str | None = None
    wer_threshold: float | None = None  # a fraction: 0.1 keeps labels within 10% WER
    wer_column: str | None = None
    # Streaming (hub and parquet): read as an IterableDataset, shuffled through a buffer of
    # `shuffle_buffer` rows (and the shard order), reseeded every epoch.
    streaming: bool = False
    shuffle_buffer: int = 1000
    name: str | None = None  # how logs and reports call it (training config: its folder's name)
    # Training labels: the pseudo-labels' token ids when a row has them (timestamps included),
    # else `text_column` tokenised; for previous-text prompts, the labels of the recording so
    # far (token ids, `pseudo-label` writes them) when a row has them, else the previous
    # window's text (`flax-distil pack` writes it); the decoder prompt's language and task.
    token_ids_column: str | None = "whisper_token_ids"
    previous_column: str | None = PREVIOUS_COLUMN
    previous_token_ids_column: str | None = PREVIOUS_TOKEN_IDS_COLUMN
    language: str | None = None  # default: the training config's data.language
    task: str = "transcribe"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise FlaxDistilError(
                f"unknown source kind {self.kind!r}; use one of {', '.join(KINDS)}"
            )
        if self.streaming and self.kind not in STREAMING_KINDS:
            raise FlaxDistilError(
                f"source {self.path}: streaming applies to {' and '.join(STREAMING_KINDS)} "
                f"sources, not {self.kind}"
            )
        if self.task not in ("transcribe", "translate"):
            raise FlaxDistilError(
                f"source {self.path}: task must be transcribe or translate, not {self.task!r}"
            )
        if self.shuffle_buffer < 1:
            raise FlaxDistilError(f"source {self.path}: shuffle_buffer must be at least 1")
        if self.weight <= 0:
            raise FlaxDistilError(f"source {self.path}: weight must be positive")
        if self.weight_by not in WEIGHT_BY:
            raise FlaxDistilError(
                f"source {self.path}: weight_by must be rows or hours, not {self.weight_by!r}"
            )
        if self.weight_by == "hours" and self.streaming:
            raise FlaxDistilError(
                f"source {self.path}: weight_by: hours needs a map-style source (set "
                "streaming: false or weight_by: rows)"
            )
        if self.ground_truth_column is not None and self.wer_column is not None:
            raise FlaxDistilError(
                f"source {self.path}: give ground_truth_column or wer_column, not both"
            )
        if self.wer_threshold is not None and not (self.ground_truth_column or self.wer_column):
            raise FlaxDistilError(
                f"source {self.path}: wer_threshold needs ground_truth_column or wer_column"
            )
        if self.wer_threshold is not None and self.wer_threshold < 0:
            raise FlaxDistilError(f"source {self.path}: wer_threshold must be >= 0")
        if self.wer_threshold is not None and self.wer_threshold > 1:
            log.warning(
                "source %s: wer_threshold %g keeps labels with up to %g%% WER (it is a fraction: "
                "0.1 keeps labels within 10%%)",
                self.path,
                self.wer_threshold,
                100 * self.wer_threshold,
            )


def spec_from_argument(dataset: str, **options) -> SourceSpec:
    """The `SourceSpec` a command-line `--dataset` names: a directory with `metadata.csv`
    (audiofolder), a directory of or a single `.parquet` file, a `.jsonl` manifest, or else a
    Hugging Face hub dataset name. A path that does not exist is an error here, not a hub name
    that fails later on the network. `options` are the other `SourceSpec` fields."""
    path = Path(dataset)
    if not (path.exists() or glob.glob(dataset)) and _looks_like_a_path(dataset):
        raise FlaxDistilError(f"{dataset}: no such directory or file")
    if path.is_dir() and (path / "metadata.csv").is_file():
        kind = "audiofolder"
    elif path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        kind = "parquet"
    elif path.suffix == ".jsonl":
        kind = "jsonl"
    elif path.exists():
        raise FlaxDistilError(
            f"{dataset}: not a dataset (expected a folder with metadata.csv, parquet files "
            "or a .jsonl manifest)"
        )
    else:
        kind = "hub"
    return SourceSpec(kind, str(dataset), **options)


def _looks_like_a_path(dataset: str) -> bool:
    """A local path rather than a hub name ("owner/name"): starts with . / or ~, has more than
    one separator or a data file's suffix, or its parent directory exists here."""
    path = Path(dataset)
    return (
        dataset.startswith((".", "/", "~"))
        or dataset.count("/") > 1
        or path.suffix in (".parquet", ".jsonl", ".json", ".csv")
        or (len(path.parts) > 1 and path.parent.is_dir())
    )


@dataclasses.dataclass(frozen=True)
class RawExample:
    """An example before decoding: audio as encoded bytes or a file path, and its label."""

    id: str
    audio_bytes: bytes | None
    audio_path: str | None
    text: object  # validated when the example is prepared
    ground_truth: object = None
    wer_threshold: float | None = None
    stored_wer: float | None = None  # from the source's wer_column; NaN when missing
    token_ids: object = None  # the label's token ids (pseudo-labels), when the source has them
    previous: object = None  # what was said before: token ids or text, when the source has it
    language: str | None = None
    task: str = "transcribe"


class Source:
    """Random access to a source's rows (`len`, `[i]`), audio left undecoded; a streaming
    source has neither and gives its rows one epoch at a time (`stream_rows`). A map-style
    table is loaded on first use (per-host training reads never load it)."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.streaming = spec.streaming
        if self.streaming:
            self.table  # noqa: B018 (cheap for a stream: check its columns now)

    @functools.cached_property
    def table(self):
        table = _load_table(self.spec)
        if table.column_names is not None:  # a streaming dataset may not know them yet
            self.check_columns(table.column_names)
        return table

    def check_columns(self, names) -> None:
        spec = self.spec
        wanted = {spec.audio_column, spec.text_column, spec.ground_truth_column, spec.wer_column}
        missing = wanted - {None} - set(names)
        if missing:
            raise FlaxDistilError(
                f"source {spec.path}: no column(s) {sorted(missing)}; it has "
                f"{list(names)} (set audio_column / text_column)"
            )
        if spec.token_ids_column in names and spec.text_column != "whisper_transcript":
            log.warning(
                "source %s: training labels come from %s, not text_column %s (set "
                "token_ids_column: null to train on %s)",
                spec.path,
                spec.token_ids_column,
                spec.text_column,
                spec.text_column,
            )

    def _map_style(self) -> None:
        if self.streaming:
            raise FlaxDistilError(
                f"source {self.spec.path} is streaming: it has no length or random access "
                "(set streaming: false)"
            )

    def __len__(self) -> int:
        self._map_style()
        return len(self.table)

    def __getitem__(self, index: int) -> RawExample:
        self._map_style()
        return self.raw_example(self.table[int(index)], self.example_id(index))

    def example_id(self, index: int) -> str:
        """The id of a map-style source's row `index` (what `source[index]` carries)."""
        return f"{self.spec.path}#{index}"

    def stream_rows(self, seed: int, epoch: int):
        """A streaming source's rows for one epoch, as dicts, in a shuffled order that depends
        only on (`seed`, `epoch`): datasets' seeded shard order and shuffle buffer. Shards are
        read one after another (datasets' interleaving of several input shards waits 5 s each
        time an iterator closes: every epoch and every restore)."""
        shuffled = self.table.shuffle(
            seed=seed, buffer_size=self.spec.shuffle_buffer, max_buffer_input_shards=1
        )
        shuffled.set_epoch(epoch)
        for number, row in enumerate(shuffled):
            if number == 0:
                self.check_columns(row)
            yield row

    def raw_example(self, row: dict, example_id: str) -> RawExample:
        """A table row as a `RawExample` (its audio still encoded)."""
        audio = row[self.spec.audio_column]
        if isinstance(audio, dict):
            audio_bytes, audio_path = audio.get("bytes"), audio.get("path")
        else:
            audio_bytes, audio_path = None, audio
        return RawExample(
            id=example_id,
            audio_bytes=audio_bytes,
            audio_path=audio_path,
            text=row.get(self.spec.text_column),  # a missing label is skipped as bad_label
            ground_truth=row[self.spec.ground_truth_column]
            if self.spec.ground_truth_column
            else None,
            wer_threshold=self.spec.wer_threshold,
            stored_wer=_as_wer(row.get(self.spec.wer_column)) if self.spec.wer_column else None,
            token_ids=_optional(row, self.spec.token_ids_column),
            previous=_optional(row, self.spec.previous_token_ids_column)
            or _optional(row, self.spec.previous_column),
            language=self.spec.language,
            task=self.spec.task,
        )

    def mean_seconds(self) -> float:
        """The mean audio duration of the whole table's rows (for `weight_by: hours`)."""
        column = self.spec.duration_column
        if column in (self.table.column_names or ()):
            return float(np.mean(np.asarray(self.table[column], np.float64)))
        return float(np.mean([row_seconds(self.table[i], self.spec) for i in range(len(self))]))

    def streamed_example(self, row: dict, epoch: int, number: int) -> RawExample:
        """The `number`-th row of a streaming source's `epoch`, named by its audio file when the
        row has one (a streamed row has no stable index)."""
        audio = row.get(self.spec.audio_column)
        path = audio.get("path") if isinstance(audio, dict) else audio
        name = path if isinstance(path, str) and path else f"epoch{epoch}.row{number}"
        return self.raw_example(row, f"{self.spec.path}#{name}")


def _optional(row: dict, column: str | None):
    return row.get(column) if column else None


def _as_wer(value) -> float:
    """A stored WER as a float; NaN for a missing or non-numeric value (it never passes)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def source_files(spec: SourceSpec) -> list[str]:
    """A local source's files, sorted, found without opening any: an audiofolder's
    metadata.csv; a parquet or JSONL source's file, the directory's `*.parquet` / `*.jsonl`
    files, or the files a glob matches."""
    path = Path(spec.path)
    if spec.kind == "audiofolder":
        return [str(path / "metadata.csv")]
    suffix = ".parquet" if spec.kind == "parquet" else ".jsonl"
    if path.is_dir():
        files = sorted(str(file) for file in path.glob(f"*{suffix}"))
    else:
        files = [spec.path] if path.is_file() else sorted(glob.glob(spec.path))
    if not files:
        raise FlaxDistilError(f"source {spec.path}: no {suffix} files there")
    return files


def manifest_rows(file: str, spec: SourceSpec) -> list[dict]:
    """The rows of an audiofolder's metadata.csv or of a JSONL manifest, audio as paths."""
    if spec.kind == "audiofolder":
        return _audiofolder_rows(Path(file).parent, spec)
    return _jsonl_rows(Path(file), spec)


def _load_table(spec: SourceSpec):
    import datasets

    if spec.kind in ("audiofolder", "jsonl"):
        return _Rows([row for file in source_files(spec) for row in manifest_rows(file, spec)])
    streaming = {"streaming": True} if spec.streaming else {}
    try:
        if spec.kind == "parquet":
            files = source_files(spec)
            table = datasets.load_dataset("parquet", data_files=files, split="train", **streaming)
        else:
            table = datasets.load_dataset(spec.path, spec.config, split=spec.split, **streaming)
    except Exception as error:  # datasets raises a zoo of types for missing or bad data
        raise FlaxDistilError(f"source {spec.path}: cannot load ({error})") from error
    if isinstance((table.features or {}).get(spec.audio_column), datasets.Audio):
        table = table.cast_column(spec.audio_column, datasets.Audio(decode=False))
    return table


class _Rows:
    """A list of row dicts with the part of the `datasets.Dataset` interface `Source` uses."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.column_names = sorted({key for row in rows for key in row})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def _audiofolder_rows(directory: Path, spec: SourceSpec) -> list[dict]:
    metadata = directory / "metadata.csv"
    if not metadata.is_file():
        raise FlaxDistilError(f"{directory}: an audiofolder needs a metadata.csv")
    with metadata.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if "file_name" not in (reader.fieldnames or ()):
            raise FlaxDistilError(f"{metadata}: needs a file_name column")
        return [{**r, spec.audio_column: str(directory / r["file_name"])} for r in reader]


def _jsonl_rows(manifest: Path, spec: SourceSpec) -> list[dict]:
    if not manifest.is_file():
        raise FlaxDistilError(f"{manifest}: no such manifest")
    rows = []
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            audio = record[spec.audio_column]
        except (ValueError, KeyError) as error:
            raise FlaxDistilError(f"{manifest}:{number}: bad manifest line ({error})") from None
        rows.append({**record, spec.audio_column: str(manifest.parent / audio)})
    return rows
