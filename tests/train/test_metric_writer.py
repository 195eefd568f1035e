"""The metric writer: scalars with their units, eval samples and hyperparameters in one
TensorBoard run."""

import json

import pytest

from flax_distil.train import load_config, train

from .conftest import settings


def test_tensorboard_has_train_and_eval_scalars(tiny_teacher, corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    folder, _ = corpus
    eval_set = f"[{{kind: audiofolder, path: {folder}, name: clips}}]"
    extra = {"data.eval": eval_set, "eval.every": 2, "eval.max_examples": 4}
    extra.update({"eval.max_new_tokens": 4, "train.num_steps": 4})
    result = train(load_config(None, settings(tiny_teacher, corpus, **extra)), tmp_path)
    assert set(result["eval"]["clips"]) == {"loss", "ce", "kl", "wer"}
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in (
        "loss",
        "ce",
        "kl",
        "learning_rate",
        "grad_norm",
        "param_norm",
        "tokens_per_second",
        "samples_per_second",
        "step_time",
        "mfu",
    ):
        assert f"train/{name}" in tags, name
    assert "eval/clips/wer" in tags
    assert [e.step for e in events.Scalars("eval/clips/wer")] == [0, 2, 4]
    assert len(events.Scalars("train/loss")) == 4
    assert "samples/clips" in events.Tags()["tensors"]  # the tag as written, no suffix
    # Every scalar says what it measures and in which unit.
    for tag in tags:
        description = events.SummaryMetadata(tag).summary_description
        units = ("fraction", "nats", "seconds", "count", "per second", "norm", "learning rate")
        assert any(unit in description for unit in units), (tag, description)
    assert "before the T^2 factor" in events.SummaryMetadata("train/kl").summary_description
    # One run holds the scalars and the hyperparameters, which list the metrics they are
    # judged by; integer settings read as integers.
    runs = {p.parent for p in (tmp_path / "tensorboard").rglob("events.out.tfevents.*")}
    assert runs == {tmp_path / "tensorboard"}
    content = events.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {info.name.tag for info in experiment.metric_infos}
    assert metrics == {"train/loss", "eval/clips/wer", "eval/clips/loss"}
    assert metrics <= tags  # each is a scalar of this run, so HPARAMS shows its value
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["train.batch_size"].string_value == "8"
    assert hparams["checkpoint.every"].string_value == "1000"
    assert hparams["train.learning_rate"].number_value == pytest.approx(1e-3)
    assert hparams["log.peak_flops"].number_value == 1e11  # the MFU denominator used
    sources = json.loads(hparams["data.eval"].string_value)
    assert sources == [{**sources[0], "kind": "audiofolder", "name": "clips"}]
