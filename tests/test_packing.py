"""Packing utterances into 30 s windows: every utterance once, audio and text joined in order."""

import csv

import numpy as np
import pytest
import soundfile

from flax_distil.data.packing import pack_audiofolder
from flax_distil.errors import FlaxDistilError


@pytest.fixture
def utterances(tmp_path):
    folder = tmp_path / "utterances"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for index in range(30):
        seconds = rng.uniform(1.0, 6.0)
        samples = np.full(int(seconds * 16000), (index + 1) / 100, np.float32)  # tells clips apart
        soundfile.write(folder / f"u{index:02d}.wav", samples, 16000, subtype="FLOAT")
        rows.append([f"u{index:02d}.wav", " ".join([f"w{index}"] * int(rng.integers(3, 12)))])
    with (folder / "metadata.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["file_name", "text"], *rows])
    return folder, rows


def test_windows_hold_every_utterance_once_shortest_first(utterances, tmp_path):
    folder, rows = utterances
    output = pack_audiofolder(folder, tmp_path / "windows", max_seconds=12.0, max_utterances=4)
    with (output / "metadata.csv").open(newline="") as handle:
        windows = list(csv.DictReader(handle))
    texts = [text for _, text in rows]
    joined = sorted(text for window in windows for text in _split(window["text"]))
    assert joined == sorted(texts)  # each utterance exactly once
    words = [len(window["text"].split()) for window in windows]
    assert words == sorted(words) and len(windows) < len(rows)
    assert {int(w["utterances"]) for w in windows} <= {1, 2, 3, 4}
    for window in windows:
        audio, rate = soundfile.read(output / window["file_name"], dtype="float32")
        count = int(window["utterances"])
        assert rate == 16000 and (count == 1 or len(audio) <= 12.0 * rate)
        levels = [round(float(v) * 100) for v in np.unique(audio) if v > 0]
        indices = [int(t.split()[0][1:]) + 1 for t in _split(window["text"])]
        assert sorted(levels) == sorted(indices)  # the window's audio is its sentences' audio


def test_packing_needs_metadata(tmp_path):
    with pytest.raises(FlaxDistilError, match=r"metadata\.csv"):
        pack_audiofolder(tmp_path, tmp_path / "out")


def _split(text: str) -> list[str]:
    """A window's transcript back into its sentences (each is one repeated word here)."""
    sentences, words = [], text.split()
    for word in words:
        if sentences and sentences[-1].split()[0] == word:
            sentences[-1] += " " + word
        else:
            sentences.append(word)
    return sentences
