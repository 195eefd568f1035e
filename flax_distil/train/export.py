"""Exporting the student: the trained decoder and the frozen parts as a Hugging Face directory.

    flax-distil export --workdir runs/demo [--step S] --output student-hf

`export` restores the checkpoint onto the devices at hand, whatever mesh and number of hosts
trained it (one host can export a pod's run), with the weights split over all of them.

Every part of the student that other hosts hold shards of (trainable parameters, and the frozen
encoder and token embedding under a `mesh.fsdp` wider than one host) is gathered whole before
process 0 writes it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import jax
import yaml
from etils import epath
from flax import nnx

from flax_distil.errors import FlaxDistilError
from flax_distil.parallel import fetch_whole
from flax_distil.train import checkpoints
from flax_distil.train.config import MeshConfig, from_dict
from flax_distil.train.optimizer import make_optimizer
from flax_distil.train.run import Run, build_run, sharded_state
from flax_distil.train.step import student_frozen_parts


def export_student(run: Run, trainable, output: str | epath.PathLike) -> epath.Path:
    """Writes the student (trained decoder + frozen encoder) as a Hugging Face directory;
    `output` may be a `gs://` URL (written locally first, then copied file by file)."""
    from flax_distil.interop import checkpoint_from_model, save_hf_checkpoint

    parts = fetch_whole([trainable, *student_frozen_parts(run.models.frozen)])
    student = nnx.merge(run.models.student_def, *parts)
    checkpoint = checkpoint_from_model(student, like=run.student_checkpoint)
    output = epath.Path(output)
    if jax.process_index() != 0:
        return output
    if "://" not in str(output):  # a local directory
        save_hf_checkpoint(checkpoint, Path(output))
        return output
    with tempfile.TemporaryDirectory() as local:
        save_hf_checkpoint(checkpoint, Path(local))
        output.mkdir(parents=True, exist_ok=True)
        for file in sorted(Path(local).iterdir()):
            (output / file.name).write_bytes(file.read_bytes())
    return output


def export_from_workdir(
    workdir: str | epath.PathLike, output: str | Path, step: int | None = None
) -> int:
    """Exports the student of a checkpoint (the latest by default); returns the step."""
    workdir = epath.Path(workdir)
    config_path = workdir / "config.yaml"
    if not config_path.exists():
        raise FlaxDistilError(f"{workdir} is not a training workdir (no config.yaml)")
    config = from_dict(yaml.safe_load(config_path.read_text()))
    # Restored onto this job's devices, whatever mesh and number of hosts trained it: the
    # weights split over all of them (orbax reshards on restore).
    config = dataclasses.replace(config, mesh=MeshConfig(data=1, fsdp=jax.device_count()))
    run = build_run(config, workdir)
    optimizer, _ = make_optimizer(config.train)
    state, state_shardings = sharded_state(run, optimizer)
    checkpointer = checkpoints.Checkpointer(workdir, config.checkpoint)
    available = checkpointer.manager.all_steps()
    step = checkpointer.latest_step() if step is None else step
    if step is None or step not in available:
        raise FlaxDistilError(f"{workdir}: no checkpoint for step {step}; there are {available}")
    abstract = checkpoints.abstract_like(state, state_shardings)
    restored = checkpointer.restore_state(step, abstract)
    export_student(run, restored["params"], output)
    checkpointer.close()
    return step
