"""`flax-distil pack`: every utterance once, in order, groups never joined, previous windows."""

import csv
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile

from flax_distil.data import SourceSpec
from flax_distil.data.packing import PackOptions, pack
from flax_distil.errors import FlaxDistilError

from .conftest import run_cli


@pytest.fixture
def utterances(tmp_path):
    """30 utterances of 1-6 s whose audio is a constant level telling them apart, spoken by
    speakers a, b, a, c in runs (a speaks again after b: a new run)."""
    folder = tmp_path / "utterances"
    folder.mkdir()
    rng = np.random.default_rng(0)
    speakers = ["a"] * 8 + ["b"] * 9 + ["a"] * 6 + ["c"] * 7
    rows = []
    for index, speaker in enumerate(speakers):
        seconds = rng.uniform(1.0, 6.0)
        samples = np.full(int(seconds * 16000), (index + 1) / 100, np.float32)
        soundfile.write(folder / f"u{index:02d}.wav", samples, 16000, subtype="FLOAT")
        text = " ".join([f"w{index}"] * int(rng.integers(3, 12)))
        rows.append([f"u{index:02d}.wav", text, speaker])
    (folder / "broken.wav").write_text("not audio")
    rows.insert(12, ["broken.wav", "unreadable", "b"])
    with (folder / "metadata.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["file_name", "text", "speaker"], *rows])
    return folder, rows


def windows_of(output):
    return [row for path in sorted(output.glob("shard-*.parquet")) for row in _rows(path)]


def _rows(path):
    return pq.read_table(path).to_pylist()


def levels(window) -> list[int]:
    audio, rate = soundfile.read(io.BytesIO(window["audio"]["bytes"]), dtype="float32")
    assert rate == 16000
    return sorted({round(float(v) * 100) for v in np.unique(audio) if v > 0})


def test_groups_are_packed_in_order_and_never_joined(utterances, tmp_path):
    folder, rows = utterances
    result = run_cli(
        "pack",
        "--dataset",
        folder,
        "--output",
        tmp_path / "packed",
        "--group-column",
        "speaker",
        "--max-seconds",
        "12",
        "--shard-size",
        "4",
    )
    assert result.returncode == 0, result.stderr
    windows = windows_of(tmp_path / "packed")
    assert len(list((tmp_path / "packed").glob("shard-*.parquet"))) == -(-len(windows) // 4)
    usable = [row for row in rows if row[0] != "broken.wav"]
    # utterances in == utterances out, in the dataset's order, the last one included
    assert " ".join(w["text"] for w in windows) == " ".join(text for _, text, _ in usable)
    assert sum(w["utterances"] for w in windows) == len(usable) == 30
    assert "1 unreadable" in result.stdout or "unreadable_audio" in result.stdout
    for window in windows:
        indices = [int(word[1:]) for word in dict.fromkeys(window["text"].split())]
        assert {usable[i][2] for i in indices} == {window["speaker"]}  # one group, the right one
        assert levels(window) == [i + 1 for i in indices]  # its audio is its sentences'
        assert window["seconds"] <= 12 or window["utterances"] == 1

    # condition_on_prev: the window before in the same run of the group ("" starts a run);
    # the runs are a 0-7, b 8-16 (the unreadable row inside it skipped), a 17-22, c 23-29.
    def run(window):
        first = int(window["text"].split()[0][1:])
        return sum(first >= start for start in (8, 17, 23))

    for before, window in zip([None, *windows], windows, strict=False):
        same = before is not None and run(before) == run(window)
        assert window["condition_on_prev"] == (before["text"] if same else "")
    assert sum(w["condition_on_prev"] == "" for w in windows) == 4


def test_demo_packing_windows_hold_1_to_n_sentences_shortest_first(utterances, tmp_path):
    folder, rows = utterances
    options = PackOptions(max_seconds=12.0, max_utterances=4, gap_seconds=0.4, shortest_first=True)
    counts = pack(SourceSpec("audiofolder", str(folder)), tmp_path / "windows", options)
    windows = windows_of(tmp_path / "windows")
    assert counts == {"utterances": 30, "windows": len(windows), "skipped": {"unreadable_audio": 1}}
    words = [len(w["text"].split()) for w in windows]
    assert words == sorted(words) and len(windows) < 30
    assert {w["utterances"] for w in windows} <= {1, 2, 3, 4}
    texts = sorted(text for _, text, _ in rows if text != "unreadable")
    assert sorted(t for w in windows for t in _split(w["text"])) == texts


def test_cut_speech_fills_full_windows_with_the_next_utterance_cut_off(utterances, tmp_path):
    folder, rows = utterances
    flags = ("--group-column", "speaker", "--max-seconds", "12", "--gap-seconds", "0.4")
    result = run_cli(
        "pack", "--dataset", folder, "--output", tmp_path / "cut", *flags, "--cut-speech"
    )
    assert result.returncode == 0, result.stderr
    windows = windows_of(tmp_path / "cut")
    usable = [text for _, text, _ in rows if text != "unreadable"]
    assert " ".join(w["text"] for w in windows) == " ".join(usable)  # whole utterances, once
    filled = 0
    for window, after in zip(windows, [*windows[1:], None], strict=True):
        own = [int(word[1:]) + 1 for word in dict.fromkeys(window["text"].split())]
        same_run = after is not None and after["condition_on_prev"] == window["text"]
        if same_run and window["seconds"] == pytest.approx(12.0, abs=1e-3):
            # the next window's first utterance, cut off where the window ends
            assert levels(window) == [*own, int(after["text"].split()[0][1:]) + 1]
            filled += 1
        else:  # a run's last window ends in silence; a full one is filled unless < 0.5 s fits
            assert levels(window) == own
            assert not same_run or window["seconds"] > 12.0 - 0.4 - 0.5
    assert filled >= 3


def test_packing_refuses_a_missing_group_column_and_a_used_output(utterances, tmp_path):
    folder, _ = utterances
    spec = SourceSpec("audiofolder", str(folder))
    with pytest.raises(FlaxDistilError, match="no column 'chapter' to group by"):
        pack(spec, tmp_path / "out", PackOptions(group_column="chapter"))
    pack(spec, tmp_path / "out")
    with pytest.raises(FlaxDistilError, match="already holds packed shards"):
        pack(spec, tmp_path / "out")


def _split(text: str) -> list[str]:
    """A window's transcript back into its sentences (each is one repeated word here)."""
    sentences, words = [], text.split()
    for word in words:
        if sentences and sentences[-1].split()[0] == word:
            sentences[-1] += " " + word
        else:
            sentences.append(word)
    return sentences
