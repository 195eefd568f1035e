"""The trainer: distil a student from a teacher with KL + cross-entropy.

    from flax_distil.train import load_config, train
    train(load_config("configs/tiny_en_demo.yaml", ["train.num_steps=50"]), "runs/demo")

Modules, in the order a run uses them: `config` (typed YAML config), `run` (models, mesh, data,
sharded state), `step` with `losses` and `optimizer` (the jitted update), `encoder_cache`,
`eval` (evaluation during training), `checkpoints`, `metric_writer`, `flops` (MFU), `loop`
(`train`: resume, log, eval, checkpoint, preemption), `export` (the student as a Hugging Face
directory), and `plan` with `devices` (per-device memory and throughput before a run).
Importing the package loads only the config; the rest loads on first use, so a bad config
fails before any model loads or any device is touched.
"""

import importlib

from flax_distil.train.config import Config, load_config

_LAZY = {
    "train": "loop",
    "export_student": "export",
    "export_from_workdir": "export",
    "build_run": "run",
    "Run": "run",
}
__all__ = ["Config", "load_config", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"flax_distil.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
