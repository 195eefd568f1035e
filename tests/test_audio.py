"""Audio decoding and the JAX log-mel front-end against transformers' WhisperFeatureExtractor."""

import numpy as np
import pytest
import soundfile

from flax_distil.audio import N_FRAMES, batch_audio, load_audio, log_mel
from flax_distil.errors import FlaxDistilError

from .conftest import AUDIO_DIR


@pytest.mark.parametrize("num_mel_bins", [80, 128])
def test_log_mel_matches_feature_extractor(clips, num_mel_bins):
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    batch = list(clips.values())
    batch += [
        (0.1 * rng.standard_normal(int(rng.integers(1_600, 500_000)))).astype(np.float32)
        for _ in range(16 - len(batch))
    ]
    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    expected = extractor(batch, sampling_rate=16000, return_tensors="np").input_features
    ours = np.asarray(log_mel(batch_audio(batch), num_mel_bins))
    assert ours.shape == (16, num_mel_bins, N_FRAMES)
    assert np.abs(ours - expected).max() <= 1e-4


def test_load_audio_downmixes_and_resamples():
    # jfk.flac is 11 s of 44.1 kHz stereo: it must come back as 16 kHz mono.
    samples = load_audio(AUDIO_DIR / "jfk.flac")
    raw, rate = soundfile.read(AUDIO_DIR / "jfk.flac", always_2d=True)
    assert rate == 44100 and raw.shape[1] == 2
    assert samples.ndim == 1 and samples.dtype == np.float32
    assert abs(len(samples) - round(len(raw) * 16000 / 44100)) <= 1
    assert 0.01 < np.abs(samples).max() <= 1.0


def test_load_audio_keeps_16k_mono_untouched():
    samples = load_audio(AUDIO_DIR / "LDC93S1.wav")
    raw, _ = soundfile.read(AUDIO_DIR / "LDC93S1.wav", dtype="float32")
    np.testing.assert_array_equal(samples, raw)


def test_unreadable_mp3_names_file(tmp_path):
    fake = tmp_path / "song.mp3"
    fake.write_text("this is not audio, just text pretending to be an mp3\n" * 20)
    with pytest.raises(FlaxDistilError, match=r"song\.mp3: cannot decode audio") as error:
        load_audio(fake)
    assert "\n" not in str(error.value)


def test_zero_length_wav_names_file(tmp_path):
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(FlaxDistilError, match=r"empty\.wav: audio is empty"):
        load_audio(empty)


def test_nan_wav_names_file(tmp_path):
    bad = tmp_path / "nan.wav"
    samples = np.zeros(1600, np.float32)
    samples[100] = np.nan
    soundfile.write(bad, samples, 16000, subtype="FLOAT")
    with pytest.raises(FlaxDistilError, match=r"nan\.wav: audio contains NaN or infinite"):
        load_audio(bad)


def test_missing_file(tmp_path):
    with pytest.raises(FlaxDistilError, match=r"nope\.wav: no such audio file"):
        load_audio(tmp_path / "nope.wav")
