"""Shared by the trainer's tests: a tiny random teacher, training overrides, tensor comparison.

A tiny random teacher (d_model 64, tiny.en's tokenizer) distils into a 2-layer student on the
20-clip corpus (`corpus` in tests/conftest.py).
"""

import numpy as np
import pytest

from ..conftest import small_whisper


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A random Whisper with d_model 64 and 4 decoder layers, saved with tiny.en's tokenizer."""
    directory = tmp_path_factory.mktemp("teacher")
    return small_whisper(directory, encoder_layers=2, decoder_layers=4, heads=4)


def settings(teacher, corpus, **extra) -> list[str]:
    folder, _ = corpus
    values = {
        "model.teacher": str(teacher),
        "data.train": f"[{{kind: audiofolder, path: {folder}}}]",
        "data.max_label_length": 16,
        "train.batch_size": 8,
        "train.num_steps": 10,
        "train.warmup_steps": 2,
        "train.learning_rate": 1e-3,
        "checkpoint.every": 1000,
        "log.every": 1,
        "log.peak_flops": 1e11,
        "eval.every": 0,
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


def assert_relative(actual, expected, tolerance=1e-5):
    """||actual - expected|| <= tolerance * ||expected|| (Frobenius norms, per tensor)."""
    difference = np.linalg.norm(np.asarray(actual, np.float64) - expected)
    assert difference <= tolerance * np.linalg.norm(np.asarray(expected, np.float64)), difference
