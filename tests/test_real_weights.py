"""Real OpenAI weights from PyPI: import, agreement with faster-whisper (CTranslate2), export."""

import jax.numpy as jnp
import numpy as np
import pytest

from flax_distil.audio import batch_audio, log_mel
from flax_distil.generation import LogitRules
from flax_distil.interop import (
    build_model,
    load_checkpoint,
    pypi_model_files,
    save_hf_checkpoint,
)
from flax_distil.tokenizer import decoder_prompt

from .conftest import torch_forward
from .test_generation import naive_greedy

GREEDY_STEPS = 20


def ctranslate2_model_dir(name: str, tmp_path):
    """The bundle as a directory ctranslate2 opens: the model.bin parts joined into one file."""
    directory, parts = pypi_model_files(name)
    target = tmp_path / name
    target.mkdir()
    (target / "model.bin").write_bytes(b"".join(p.read_bytes() for p in parts))
    for extra in directory.iterdir():
        if extra.suffix in (".json", ".txt"):
            (target / extra.name).symlink_to(extra)
    return target


def until_end(tokens, end_of_text):
    tokens = list(map(int, tokens))
    return tokens[: tokens.index(end_of_text) + 1] if end_of_text in tokens else tokens


@pytest.fixture(scope="module")
def features(clips):
    return np.array(log_mel(batch_audio(list(clips.values())), 80))  # writable, for ctranslate2


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_greedy_tokens_match_faster_whisper(name, features, tmp_path):
    import ctranslate2

    checkpoint = load_checkpoint(f"pypi:{name}")
    model = build_model(checkpoint)
    prompt = decoder_prompt(checkpoint.tokenizer, multilingual=checkpoint.config.is_multilingual)
    raw_argmax = LogitRules(eos_token_id=-1, no_timestamps_token_id=-1, timestamp_begin=-1)
    prompts = np.tile(np.asarray(prompt, np.int32), (len(features), 1))
    ours = naive_greedy(model, jnp.asarray(features), prompts, raw_argmax, GREEDY_STEPS)

    peer = ctranslate2.models.Whisper(
        str(ctranslate2_model_dir(name, tmp_path)), device="cpu", compute_type="float32"
    )
    results = peer.generate(
        ctranslate2.StorageView.from_array(features),
        [prompt] * len(features),
        beam_size=1,
        max_length=len(prompt) + GREEDY_STEPS,
        suppress_blank=False,
        suppress_tokens=[],
    )
    end_of_text = checkpoint.config.eos_token_id
    for row, result in enumerate(results):
        expected = until_end(result.sequences_ids[0], end_of_text)[:GREEDY_STEPS]
        got = until_end(ours[row], end_of_text)[: len(expected)]
        assert len(expected) >= 10
        assert got == expected, checkpoint.tokenizer.decode(got)


def test_exported_tiny_en_matches_in_transformers_pytorch(clips, tmp_path):
    from transformers import AutoProcessor

    checkpoint = load_checkpoint("pypi:tiny.en")
    export = save_hf_checkpoint(checkpoint, tmp_path / "tiny.en-hf")
    processor = AutoProcessor.from_pretrained(export)
    jfk = processor(clips["jfk.flac"], sampling_rate=16000, return_tensors="np").input_features
    assert len(processor.tokenizer) == 51864  # timestamp tokens were added

    text = processor.tokenizer(" And so my fellow", add_special_tokens=False).input_ids
    tokens = np.array([decoder_prompt(checkpoint.tokenizer, multilingual=False) + text])
    model = build_model(checkpoint)
    logits = np.asarray(model(jnp.asarray(jfk), jnp.asarray(tokens)))
    _, logits_ref, loading_info = torch_forward(export, jfk, tokens, tmp_path)
    assert not any(loading_info.values()), loading_info  # no missing/unexpected weights
    assert np.abs(logits - logits_ref).max() <= 1e-3
