"""Offline demo speech: sentence filter, noise at a given SNR, and speech tiny.en understands."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from flax_distil.demo_speech import draw_sentences, mix_noise, sentences, speakable
from flax_distil.errors import FlaxDistilError


def test_only_exactly_speakable_sentences_are_kept():
    assert speakable("The two men shook hands for the twentieth time.")
    assert not speakable("Mr. Smith came home late that night.")  # abbreviation
    assert not speakable("He paid 20 pounds for the old horse.")  # digits
    assert not speakable("Too short here.")  # under five words
    assert not speakable('He said "stop" and left the room at once.')  # quotes
    assert not speakable("It was (as he said) a very long way.")  # brackets
    assert all(speakable(s) for s in sentences("arctic")[:50])
    assert len(sentences("arctic")) > 1000 and len(sentences("nowhere")) > 300


def test_more_utterances_than_sentences_repeat_the_whole_pool_evenly():
    drawn = draw_sentences(40, 100, np.random.default_rng(0))
    assert sorted(drawn[:40]) == list(range(40))  # every sentence before any repeats
    assert sorted(drawn[40:80]) == list(range(40))
    assert set(np.bincount(drawn, minlength=40)) == {2, 3}
    assert len(draw_sentences(40, 7, np.random.default_rng(0))) == 7


@pytest.mark.parametrize("snr_db", [10.0, 0.0, -5.0])
def test_noise_is_mixed_at_the_requested_snr(snr_db):
    rng = np.random.default_rng(0)
    clean = np.sin(np.linspace(0, 400, 16000)).astype(np.float32)
    noisy = mix_noise(clean, rng.standard_normal(8000), snr_db)  # noise is tiled to length
    measured = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert abs(measured - snr_db) < 1e-3


def test_noise_needs_an_snr(tmp_path):
    from flax_distil.demo_speech import make_demo_data

    with pytest.raises(FlaxDistilError, match=r"--noise white\|babble together with --snr"):
        make_demo_data(tmp_path, 4, noise="white")


def test_twenty_demo_utterances_are_recognised_by_tiny_en(tmp_path):
    from flax_distil.audio import batch_audio, load_audio, log_mel
    from flax_distil.generation import Transcriber
    from flax_distil.metrics import word_error_rate

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flax_distil",
            "make-demo-data",
            "--output",
            str(tmp_path),
            "--num-utterances",
            "20",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "metadata.csv").open()))
    assert len(rows) == 20 and len({r["text"] for r in rows}) == 20
    clips = [load_audio(tmp_path / r["file_name"]) for r in rows]
    assert all(0.8 < len(c) / 16000 < 20 for c in clips)
    transcriber = Transcriber.load("pypi:tiny.en")
    generated = transcriber.generate(log_mel(batch_audio(clips)), max_new_tokens=96)
    predictions = [transcriber.text(row) for row in generated.rows()]
    # Piper's voice noise is not seeded: the same 20 sentences score 0.10-0.16 from run to run;
    # speech that is not English scores near 1.
    assert word_error_rate([r["text"] for r in rows], predictions) <= 0.25
