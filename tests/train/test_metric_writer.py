"""The metric writer: training and eval scalars (and eval samples) in TensorBoard."""

from flax_distil.train import load_config, train

from .conftest import settings


def test_tensorboard_has_train_and_eval_scalars(tiny_teacher, corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

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
    assert any("samples/clips" in tag for tag in events.Tags()["tensors"])
