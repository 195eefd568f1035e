"""Exporting the student: the trained decoder and the frozen parts as a Hugging Face directory.

    flax-distil export --workdir runs/demo [--step S] --output student-hf

Every sharded part (trainable parameters, and frozen ones under `mesh.fsdp`) is gathered whole
before process 0 writes it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import yaml

from flax_distil.errors import FlaxDistilError
from flax_distil.parallel import allgather
from flax_distil.train import checkpoints
from flax_distil.train.config import from_dict
from flax_distil.train.optimizer import make_optimizer
from flax_distil.train.run import Run, build_run, sharded_state


def export_student(run: Run, trainable, output: str | Path) -> Path:
    """Writes the student (trained decoder + frozen encoder) as a Hugging Face directory."""
    from flax_distil.interop import checkpoint_from_model, save_hf_checkpoint

    if jax.process_count() > 1:
        trainable = allgather(trainable, tiled=True)
    student = run.models.student(trainable)
    checkpoint = checkpoint_from_model(student, like=run.student_checkpoint)
    if jax.process_index() == 0:
        save_hf_checkpoint(checkpoint, Path(output))
    return Path(output)


def export_from_workdir(workdir: str | Path, output: str | Path, step: int | None = None) -> int:
    """Exports the student of a checkpoint (the latest by default); returns the step."""
    workdir = Path(workdir)
    config_path = workdir / "config.yaml"
    if not config_path.exists():
        raise FlaxDistilError(f"{workdir} is not a training workdir (no config.yaml)")
    config = from_dict(yaml.safe_load(config_path.read_text()))
    run = build_run(config, workdir)
    optimizer, _ = make_optimizer(config.train)
    state, state_shardings = sharded_state(run, optimizer)
    checkpointer = checkpoints.Checkpointer(workdir, config.checkpoint)
    available = checkpointer.manager.all_steps()
    step = checkpointer.latest_step() if step is None else step
    if step is None or step not in available:
        raise FlaxDistilError(f"{workdir}: no checkpoint for step {step}; there are {available}")
    abstract = checkpoints.abstract_like(state, state_shardings)
    restored, _ = checkpointer.restore(step, abstract)
    export_student(run, restored["params"], output)
    checkpointer.close()
    return step
