"""Streaming pseudo-labelling of a parquet directory: one set of parts per input file, the same
labels as map-style, SIGKILL mid-file and restart, and the process split."""

import io
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

from flax_distil.cli import main
from flax_distil.data import SourceSpec
from flax_distil.generation import Transcriber
from flax_distil.pseudo_label import PseudoLabelOptions, pseudo_label
from flax_distil.pseudo_label_files import KILL_AT_PIECE

from .conftest import small_whisper

FILE_ROWS = (5, 7, 3, 6)  # rows of each input parquet file
SHARD_SIZE, BATCH_SIZE, MAX_NEW_TOKENS = 2, 2, 4
# Parts per file: ceil(rows / 2) = 3, 4, 2, 3. The killed job dies writing its 5th part
# (file 1's second), with file 0 finished and file 1 one part in.
KILL_AT, FINISHED_BEFORE_KILL = 5, 4
SILENT_ROW = 9  # unusable audio: counted as skipped, not labelled


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """The random 1+1-layer Whisper of test_pseudo_label.py: fast, input-dependent labels."""
    directory = tmp_path_factory.mktemp("models") / "small"
    return str(small_whisper(directory, encoder_layers=1, decoder_layers=1, heads=2, scale=3.0))


@pytest.fixture(scope="module")
def transcriber(small_model):
    return Transcriber.load(small_model)


def _flac(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="FLAC")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    """Four parquet files of short tones (FLAC bytes), row i labelled "utterance number i"."""
    directory = tmp_path_factory.mktemp("stream") / "data"
    directory.mkdir()
    row = 0
    for number, rows in enumerate(FILE_ROWS):
        audio, texts = [], []
        for _ in range(rows):
            tone = np.sin(2 * np.pi * (120 + 173 * row) * np.arange(3000 + 40 * row) / 16000)
            samples = np.zeros(4000) if row == SILENT_ROW else (0.05 + 0.03 * (row % 5)) * tone
            audio.append({"bytes": _flac(samples), "path": f"utt{row:03d}.flac"})
            texts.append(f"utterance number {row}")
            row += 1
        table = pa.table({"audio": audio, "text": texts})
        pq.write_table(table, directory / f"train-{number:05d}-of-{len(FILE_ROWS):05d}.parquet")
    return directory


def _options() -> PseudoLabelOptions:
    return PseudoLabelOptions(
        batch_size=BATCH_SIZE, shard_size=SHARD_SIZE, max_new_tokens=MAX_NEW_TOKENS
    )


def _rows(output) -> list[dict]:
    """Every labelled row, in file-name order (source file, then part)."""
    paths = sorted(output.glob("*.parquet"))
    return [row for path in paths for row in pq.read_table(path).to_pylist()]


def _parts(output) -> list:
    return sorted(output.glob("shard-*-of-*.part-*.parquet"))


@pytest.fixture(scope="module")
def uninterrupted(transcriber, parquet_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted") / "labels"
    spec = SourceSpec("parquet", str(parquet_dir), streaming=True)
    summary = pseudo_label(transcriber, spec, output, _options())
    return output, summary


def test_streaming_writes_parts_per_input_file_with_the_map_style_labels(
    transcriber, parquet_dir, uninterrupted, tmp_path
):
    output, summary = uninterrupted
    parts = [path.name for path in _parts(output)]
    expected = [
        f"shard-{file:05d}-of-00004.part-{part:05d}.parquet"
        for file, rows in enumerate(FILE_ROWS)
        for part in range((rows + SHARD_SIZE - 1) // SHARD_SIZE)
    ]
    assert parts == expected
    total = sum(FILE_ROWS)
    assert summary["shards"] == len(FILE_ROWS) and summary["examples"] == total
    assert summary["labelled"] == total - 1 and summary["skipped"] == {"silent_audio": 1}
    rows = _rows(output)
    texts = [f"utterance number {i}" for i in range(total) if i != SILENT_ROW]
    assert [row["text"] for row in rows] == texts
    assert len({row["whisper_transcript"] for row in rows}) > 5  # labels vary with the input

    map_style = tmp_path / "map-style"
    pseudo_label(transcriber, SourceSpec("parquet", str(parquet_dir)), map_style, _options())
    assert rows == _rows(map_style)


def test_sigkill_mid_file_and_rerun_writes_every_row_once(
    small_model, parquet_dir, uninterrupted, tmp_path
):
    output = tmp_path / "labels"
    command = [
        "pseudo-label", "--streaming", "--model", small_model, "--dataset", str(parquet_dir),
        "--output", str(output), "--batch-size", str(BATCH_SIZE),
        "--shard-size", str(SHARD_SIZE), "--max-new-tokens", str(MAX_NEW_TOKENS),
    ]  # fmt: skip
    job = subprocess.run(
        [sys.executable, "-m", "flax_distil", *command],
        env={**os.environ, KILL_AT_PIECE: str(KILL_AT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=600,
    )
    assert job.returncode == -signal.SIGKILL, job.stderr.decode()[-2000:]
    finished = {path: path.stat().st_mtime_ns for path in _parts(output)}
    assert len(finished) == FINISHED_BEFORE_KILL
    assert [path.name for path in output.glob(".*.tmp")] == [  # the part it was writing
        ".shard-00001-of-00004.part-00001.parquet.tmp"
    ]
    assert not (output / "_summary.json").exists()

    assert main(command) == 0  # the same command resumes
    assert {path: path.stat().st_mtime_ns for path in finished} == finished  # not redone
    assert not list(output.glob(".*"))  # no temporary file left
    expected_output, _ = uninterrupted
    rows, expected = _rows(output), _rows(expected_output)
    assert [row["text"] for row in rows] == [row["text"] for row in expected]  # each row once
    assert rows == expected
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["examples"] == sum(FILE_ROWS)
    finished_rows = sum(pq.read_metadata(path).num_rows for path in finished)  # none skipped
    assert summary["examples_this_run"] == sum(FILE_ROWS) - finished_rows


def test_processes_split_the_hub_streams_shards(transcriber, parquet_dir, uninterrupted, tmp_path):
    """Process i of 2 labels files i, i+2; here one after the other, in this one process. The
    directory read as a hub dataset (`load_dataset(DIR)`) streams the same files as shards."""
    spec, output = SourceSpec("hub", str(parquet_dir), streaming=True), tmp_path / "labels"
    second = pseudo_label(transcriber, spec, output, _options(), process_index=1, process_count=2)
    assert second is None  # only process 0 writes the summary
    assert {path.name.split(".part")[0] for path in _parts(output)} == {
        "shard-00001-of-00004",
        "shard-00003-of-00004",
    }
    summary = pseudo_label(transcriber, spec, output, _options(), process_index=0, process_count=2)
    assert _rows(output) == _rows(uninterrupted[0])
    assert summary["examples"] == sum(FILE_ROWS)


def test_a_rerun_as_map_style_or_with_another_file_is_refused(
    transcriber, parquet_dir, uninterrupted, tmp_path
):
    import shutil

    from flax_distil.errors import FlaxDistilError

    output, _ = uninterrupted
    with pytest.raises(FlaxDistilError, match=r"another command.*rows None there, 21 now"):
        pseudo_label(transcriber, SourceSpec("parquet", str(parquet_dir)), output, _options())
    # The same directory with a fifth file: the manifest's shard count no longer matches.
    data, labels = tmp_path / "data", tmp_path / "labels"
    shutil.copytree(parquet_dir, data)
    shutil.copy(data / "train-00000-of-00004.parquet", data / "train-00004-of-00004.parquet")
    labels.mkdir()
    manifest = json.loads((output / "_manifest.json").read_text())
    manifest["dataset"]["path"] = str(data)
    (labels / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FlaxDistilError, match="shards 4 there, 5 now"):
        pseudo_label(transcriber, SourceSpec("parquet", str(data), streaming=True), labels)
