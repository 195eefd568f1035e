"""The trainer's parallel input path end to end: decoding workers, int16 audio and batches put
on the devices one step ahead train exactly like in-thread decoding, across a resume."""

import multiprocessing

from flax_distil.train import load_config, train

from .conftest import settings
from .test_loop import assert_same_run


def test_decoding_workers_and_device_prefetch_resume_like_the_batch_thread(
    tiny_teacher, corpus, tmp_path
):
    overrides = settings(tiny_teacher, corpus, **{"train.num_steps": 4, "checkpoint.every": 2})
    train(load_config(None, overrides), tmp_path / "thread")
    workers = [*overrides, "data.num_workers=2"]
    # Stopped after step 2 while batch 3 already sat on the devices: the checkpoint's data
    # state must be the one after batch 2, so the resumed run reads batch 3 again.
    train(load_config(None, [*workers, "train.num_steps=2"]), tmp_path / "workers")
    result = train(load_config(None, workers), tmp_path / "workers")
    assert result["finished"]
    assert not multiprocessing.active_children()  # the run stopped its decoding workers
    assert_same_run(tmp_path / "workers", tmp_path / "thread", tolerance=0.0)  # bitwise on CPU
