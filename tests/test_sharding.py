"""Every device pulls its weight: decoding and training on 8 CPU devices vs 1.

One subprocess with 8 CPU devices (tests/sharding_worker.py) measures everything; each test
reads its part. The model is a tiny random teacher with a 2-layer draft made from it.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import checkout_env, small_whisper

WORKER = Path(__file__).parent / "sharding_worker.py"


@pytest.fixture(scope="module")
def measured(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    # Larger weights: transcripts that vary with the input (so equal rows mean something).
    teacher = small_whisper(
        root / "teacher", encoder_layers=2, decoder_layers=4, heads=4, scale=3.0
    )
    folder, _ = corpus
    out = root / "out" / "result.json"
    out.parent.mkdir()
    command = [sys.executable, str(WORKER), str(teacher), str(folder), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=checkout_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_features_encoder_output_and_tokens_stay_split_over_the_devices(measured):
    assert measured["devices"] == 8 and measured["mesh"] == {"data": 8, "fsdp": 1}
    for name, sharding in measured["shardings"].items():
        assert sharding == {"spec": "P('data',)", "shards": 8}, name


def test_no_program_gathers_audio_features_or_encoder_output(measured):
    for program, found in measured["collectives"].items():
        assert found == [], (program, found)


def test_eight_devices_hold_a_quarter_of_one_devices_decoding_memory(measured):
    temp = measured["decode_temp_bytes"]
    assert temp["8"] * 4 <= temp["1"], temp


@pytest.mark.parametrize("mode", ["greedy", "speculative"])
def test_transcripts_on_eight_devices_equal_one_device(measured, mode):
    eight, one = measured["transcripts"][mode]
    assert len(eight) == 20 and eight == one
    assert len({tuple(tokens) for tokens in one}) > 1  # the rows differ: a real comparison


def test_pseudo_labels_evaluation_and_training_eval_equal_one_device(measured):
    eight, one = measured["pseudo_labels"]
    assert len(eight) == 20 and eight == one
    wer_eight, wer_one = measured["evaluate"]
    assert wer_eight == wer_one
    training_eight, training_one = measured["training_eval"]
    assert training_eight == training_one and len(training_one["predictions"]) == 20
