"""The training config: one-line errors naming the key, defaults, YAML quirks, source names.

Nothing here loads a model: the config is checked before any device or model work.
"""

import pytest
import yaml

from flax_distil.data import SourceSpec
from flax_distil.errors import FlaxDistilError
from flax_distil.train.config import Config, dump_yaml, from_dict, load_config

from ..conftest import run_cli

SECTIONS = "model, data, train, loss, mesh, checkpoint, eval, log"
SOURCE_KEYS = (
    "kind, path, config, split, audio_column, text_column, weight, weight_by, duration_column, "
    "ground_truth_column, wer_threshold, wer_column, streaming, shuffle_buffer, name, "
    "token_ids_column, previous_column, previous_token_ids_column, language, task"
)


def error_of(path=None, overrides=()) -> str:
    """The message `load_config` raises, checked to be one line."""
    with pytest.raises(FlaxDistilError) as caught:
        load_config(path, list(overrides))
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def write(path, text):
    path.write_text(text)
    return path


def test_unknown_section_on_the_command_line_and_in_a_file(tmp_path):
    assert error_of(overrides=["trian.num_steps=5"]) == (
        f"command line: unknown section 'trian'; sections are {SECTIONS}"
    )
    config = write(tmp_path / "run.yaml", "trian:\n  num_steps: 5\n")
    assert error_of(config) == f"{config}: unknown section 'trian'; sections are {SECTIONS}"


def test_unknown_key_names_the_section_and_its_keys():
    message = error_of(overrides=["train.num_step=5"])
    assert message.startswith("command line: unknown key train.num_step; train has "), message
    assert "num_steps" in message.split("train has ")[1]


def test_unknown_source_key_lists_the_source_keys():
    source = "data.train=[{kind: parquet, path: labels, txt_column: a}]"
    assert error_of(overrides=[source]) == (
        f"data.train[0]: unknown key 'txt_column'; data.train[0] takes {SOURCE_KEYS}"
    )
    second = "data.eval=[{kind: parquet, path: a}, {kind: jsonl, path: b.jsonl, wer: 1}]"
    assert error_of(overrides=[second]).startswith("data.eval[1]: unknown key 'wer'; ")


def test_unknown_source_kind_lists_the_kinds():
    source = "data.train=[{kind: parquett, path: labels}]"
    assert error_of(overrides=[source]) == (
        "data.train[0]: unknown source kind 'parquett'; use one of hub, parquet, audiofolder, jsonl"
    )


def test_bad_choice_lists_the_choices():
    assert error_of(overrides=["model.compute_dtype=float16"]) == (
        "model.compute_dtype='float16': choose one of float32, bfloat16"
    )
    assert error_of(overrides=["train.on_nan=ignore"]) == (
        "train.on_nan='ignore': choose one of stop, skip"
    )


def test_wrong_types_are_named():
    assert error_of(overrides=["train.num_steps=abc"]) == "train.num_steps: expected int, got 'abc'"
    assert error_of(overrides=["train.num_steps=2.5"]) == "train.num_steps: expected int, got 2.5"
    assert error_of(overrides=["loss.kl_weight=true"]) == "loss.kl_weight: expected float, got True"
    assert error_of(overrides=["train.num_steps=yes"]) == "train.num_steps: expected int, got True"
    assert error_of(overrides=["model.remat_decoder=1"]) == (
        "model.remat_decoder: expected bool, got 1"
    )


def test_a_base_file_cannot_name_a_base(tmp_path):
    write(tmp_path / "grandparent.yaml", "train:\n  num_steps: 3\n")
    base = write(tmp_path / "parent.yaml", "base: grandparent.yaml\ntrain:\n  batch_size: 4\n")
    config = write(tmp_path / "run.yaml", "base: parent.yaml\n")
    assert error_of(config) == f"{base}: a base file cannot name a base itself"


def test_a_base_file_is_read_under_the_experiment_file(tmp_path):
    write(tmp_path / "parent.yaml", "train:\n  num_steps: 3\n  batch_size: 4\n")
    config = write(tmp_path / "run.yaml", "base: parent.yaml\ntrain:\n  batch_size: 2\n")
    loaded = load_config(config, ["train.seed=7"])
    assert (loaded.train.num_steps, loaded.train.batch_size, loaded.train.seed) == (3, 2, 7)


def test_invalid_yaml_is_named(tmp_path):
    config = write(tmp_path / "run.yaml", "train:\n  num_steps: [1, 2\n")
    message = error_of(config)
    assert message.startswith(f"{config}: not valid YAML ("), message


def test_two_eval_sources_with_the_same_name_are_refused(tmp_path):
    twins = "data.eval=[{kind: audiofolder, path: a/clips}, {kind: audiofolder, path: b/clips}]"
    assert error_of(overrides=[twins]) == ("data.eval: two sources named 'clips'; give each a name")
    named = (
        "data.eval=[{kind: audiofolder, path: a/clips}, "
        "{kind: audiofolder, path: b/clips, name: other}]"
    )
    assert [spec.name for spec in load_config(None, [named]).data.eval] == ["clips", "other"]


def test_wer_threshold_is_a_fraction(caplog):
    source = "{kind: parquet, path: labels, wer_column: wer, wer_threshold: %s}"
    message = error_of(overrides=[f"data.train=[{source % -0.1}]"])
    assert message == "data.train[0]: source labels: wer_threshold must be >= 0", message
    accepted = load_config(None, [f"data.train=[{source % 0.1}]"]).data.train[0]
    assert accepted.wer_threshold == 0.1 and not caplog.records
    # A percent written by habit keeps nearly every label: allowed (random models' labels go
    # above 100% WER), with a warning that names the unit.
    assert load_config(None, [f"data.train=[{source % 10}]"]).data.train[0].wer_threshold == 10
    (warning,) = caplog.records
    assert "keeps labels with up to 1000% WER (it is a fraction" in warning.getMessage()


def test_defaults_round_trip_through_yaml():
    defaults = Config()
    assert load_config() == defaults
    assert from_dict(yaml.safe_load(dump_yaml(defaults))) == defaults


def test_a_config_with_sources_round_trips_through_yaml():
    config = load_config(
        None,
        [
            "data.train=[{kind: parquet, path: labels, wer_column: wer, wer_threshold: 0.1}, "
            "{kind: audiofolder, path: more, weight: 2}]",
            "data.eval=[{kind: audiofolder, path: held/out, name: heldout}]",
            "train.learning_rate=3e-4",
            "model.student=null",
        ],
    )
    assert all(isinstance(spec, SourceSpec) for spec in config.data.train + config.data.eval)
    assert from_dict(yaml.safe_load(dump_yaml(config))) == config


def test_exponent_without_a_dot_is_a_float(tmp_path):
    assert yaml.safe_load("3e-4") == "3e-4"  # YAML 1.1: a string, which the config must read
    for config in (
        load_config(None, ["train.learning_rate=3e-4"]),
        load_config(write(tmp_path / "run.yaml", "train:\n  learning_rate: 3e-4\n")),
    ):
        assert config.train.learning_rate == 3e-4
        assert type(config.train.learning_rate) is float
    assert type(load_config(None, ["loss.kl_weight=2"]).loss.kl_weight) is float


def test_sources_are_named_after_their_folder_by_default():
    config = load_config(
        None,
        [
            "data.train=[{kind: audiofolder, path: /data/speech/train-clean}]",
            "data.eval=[{kind: audiofolder, path: /data/speech/heldout/}, "
            "{kind: parquet, path: /data/other, name: mine}]",
        ],
    )
    assert [spec.name for spec in config.data.train] == ["train-clean"]
    assert [spec.name for spec in config.data.eval] == ["heldout", "mine"]
    assert config.data.eval[0].path == "/data/speech/heldout/"  # only the name is added


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{kind: parquet, path: P, txt_column: a}", "data.train[0]: unknown key 'txt_column'"),
        ("{kind: parquett, path: P}", "data.train[0]: unknown source kind 'parquett'"),
    ],
    ids=["unknown-key", "unknown-kind"],
)
def test_train_command_refuses_a_bad_source_before_loading_a_model(tmp_path, source, message):
    # The teacher named here does not exist: had the command loaded a model before checking the
    # config, its error would be about the teacher, not the source.
    config = write(tmp_path / "run.yaml", f"model:\n  teacher: {tmp_path / 'no-teacher'}\n")
    workdir = tmp_path / "work"
    result = run_cli(
        "train", "--dry-run", "--workdir", workdir, "--config", config, f"data.train=[{source}]"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stdout == ""
    assert not workdir.exists()  # no config.yaml written, no run prepared
