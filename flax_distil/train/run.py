"""Building a training run: workdir and config, models, mesh, data, sharded state, FLOPs.

    run = build_run(config, prepare_workdir(config, workdir))
    state, state_shardings = sharded_state(run, optimizer)

`Run` holds what every later stage needs (checkpoints of both models, the split models, the
mesh, the step's static settings, the decoder prompt); the loop (`train.loop`), evaluation
during training (`train.eval`) and export (`train.export`) take it. Rerunning on a workdir checks
that the config still describes the same run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import yaml
from etils import epath

from flax_distil import parallel
from flax_distil.data import (
    Batches,
    BatchSpec,
    ExampleFilter,
    ExampleStream,
    Labeller,
    Source,
)
from flax_distil.data.workers import decoding_in_workers
from flax_distil.errors import FlaxDistilError
from flax_distil.tokenizer import decoder_prompt
from flax_distil.train import flops
from flax_distil.train.config import Config, dump_yaml, from_dict
from flax_distil.train.metric_writer import flatten
from flax_distil.train.step import (
    DistillModels,
    StepSettings,
    init_train_state,
)

STEP_INPUTS = ("decoder_input_ids", "labels", "loss_mask", "audio", "features")
# Keys that must not change between a run and its resumption.
RESUME_KEYS = ("model", "data.train", "data.seed", "loss", "train.batch_size", "train.seed")


@dataclasses.dataclass
class Run:
    """Everything a training run is built from, for the loop, evaluation, export and tests."""

    config: Config
    workdir: Path
    teacher_checkpoint: object
    student_checkpoint: object
    models: DistillModels
    mesh: object
    settings: StepSettings
    prompt: list[int]


# Workdir and config -------------------------------------------------------------------------------


def prepare_workdir(config: Config, workdir: str | epath.PathLike) -> epath.Path:
    """Creates the workdir (a local path or a `gs://` URL: an `etils.epath.Path`, which `pathlib`
    would mangle); on a rerun checks the config still describes the same run."""
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    saved_path = workdir / "config.yaml"
    if saved_path.exists():
        saved = flatten(from_dict(yaml.safe_load(saved_path.read_text())).to_dict())
        current = flatten(config.to_dict())
        changed = [
            key
            for key in sorted(current)
            if key.startswith(RESUME_KEYS) and saved.get(key) != current[key]
        ]
        if changed:
            raise FlaxDistilError(
                f"{workdir} holds a run with different {', '.join(changed)}; use a new --workdir "
                "or the same settings to resume"
            )
    if jax.process_index() == 0:
        saved_path.write_text(dump_yaml(config))
    return workdir


# Models -------------------------------------------------------------------------------------------


def step_settings(config: Config, num_mel_bins: int) -> StepSettings:
    """The compiled step's static settings from the config's loss, train and model sections."""
    return StepSettings(
        ce_weight=config.loss.ce_weight,
        kl_weight=config.loss.kl_weight,
        temperature=config.loss.temperature,
        microbatches=config.train.microbatches,
        dropout=config.model.dropout,
        num_mel_bins=num_mel_bins,
        spec_augment=config.data.spec_augment,
    )


def build_run(config: Config, workdir: Path, devices=None) -> Run:
    from flax_distil.interop import build_model, load_checkpoint
    from flax_distil.student import make_student, spaced_layers

    model = config.model
    teacher_checkpoint = load_checkpoint(model.teacher)
    if model.student:
        student_checkpoint = load_checkpoint(model.student)
    else:
        layers = spaced_layers(
            teacher_checkpoint.config.decoder_layers, model.student_decoder_layers
        )
        student_checkpoint = make_student(teacher_checkpoint, decoder_layer_ids=layers)
    dtype = jnp.dtype(model.compute_dtype)
    # The teacher is all frozen: its weights load in the compute dtype; the student keeps float32
    # master weights (its frozen parts are cast once, in `DistillModels.build`).
    teacher = build_model(teacher_checkpoint, dtype=dtype, param_dtype=dtype)
    student = build_model(student_checkpoint, dtype=dtype, **remat_settings(config))
    prompt = decoder_prompt(
        student_checkpoint.tokenizer,
        multilingual=student.config.is_multilingual,
        language=config.data.language,
    )
    checkpoints = (teacher_checkpoint, student_checkpoint)
    return assemble_run(config, workdir, checkpoints, (teacher, student), prompt, devices)


def remat_settings(config: Config) -> dict:
    return dict(remat_encoder=config.model.remat_encoder, remat_decoder=config.model.remat_decoder)


def assemble_run(config, workdir, checkpoints, models, prompt, devices=None, shared_encoder=None):
    """A `Run` from loaded (or abstract, for planning) (teacher, student) checkpoints and models;
    `shared_encoder` as `DistillModels.build` takes it."""
    teacher, student = models
    distill = DistillModels.build(
        student,
        teacher,
        freeze_encoder=config.model.freeze_encoder,
        freeze_token_embeddings=config.model.freeze_token_embeddings,
        frozen_dtype=jnp.dtype(config.model.compute_dtype),
        shared_encoder=shared_encoder,
    )
    settings = step_settings(config, student.config.num_mel_bins)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    return Run(config, workdir, *checkpoints, distill, mesh, settings, prompt)


# Data ---------------------------------------------------------------------------------------------


def example_limits(config: Config) -> ExampleFilter:
    return ExampleFilter(min_seconds=config.data.min_seconds, max_seconds=config.data.max_seconds)


def train_batches(run: Run) -> Batches:
    data, train = run.config.data, run.config.train
    if not data.train:
        raise FlaxDistilError("data.train is empty: name at least one training source")
    host_batch = parallel.check_batch_size(run.mesh, train.batch_size, train.microbatches)
    sources = [Source(spec) for spec in data.train]
    stream = ExampleStream(
        sources,
        seed=data.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        block_size=host_batch,
        limits=example_limits(run.config),
        max_skip_ratio=data.max_skip_ratio,
        stopping_strategy=data.stopping_strategy,
    )
    stream = decoding_in_workers(stream, data.num_workers)  # 0: decoded in the batch thread
    labeller = Labeller(
        run.student_checkpoint.tokenizer,
        run.student_checkpoint.config.is_multilingual,
        data.label_spec(),
    )
    spec = BatchSpec(
        batch_size=host_batch,
        label_bucket=data.label_bucket,
        length_groups=data.length_groups,
        features_on=data.features_on,
        num_mel_bins=run.settings.num_mel_bins,
    )
    return Batches(stream, labeller, spec, data.prefetch)


def batch_shapes(run: Run, batch: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """Global shapes of the step's inputs (at the config's batch size, or `batch`), for compiling
    without data (`--dry-run`, `plan`)."""
    batch = batch or run.config.train.batch_size
    length = run.config.data.max_label_length
    spec = parallel.batch_sharding(run.mesh)
    shapes = {
        "decoder_input_ids": ((batch, length), jnp.int32),
        "labels": ((batch, length), jnp.int32),
        "loss_mask": ((batch, length), jnp.float32),
    }
    if run.config.data.cache_encoder_outputs:
        student = run.student_checkpoint.config
        shapes["encoder_out"] = (
            (batch, student.max_source_positions, student.d_model),
            jnp.dtype(run.config.model.compute_dtype),
        )
    elif run.config.data.features_on == "device":
        shapes["audio"] = ((batch, 480000), jnp.int16)  # PCM, made float in the step's log-mel
    else:
        shapes["features"] = ((batch, run.settings.num_mel_bins, 3000), jnp.float32)
    return {k: jax.ShapeDtypeStruct(s, d, sharding=spec) for k, (s, d) in shapes.items()}


# Sharded state, memory and FLOPs ------------------------------------------------------------------


def sharded_state(run: Run, optimizer):
    state = init_train_state(run.models, optimizer, run.config.train.seed)
    state_shardings = parallel.state_shardings(run.mesh, state)
    state = jax.device_put(state, state_shardings)
    run.models.frozen = jax.device_put(
        run.models.frozen, parallel.state_shardings(run.mesh, run.models.frozen)
    )
    return state, state_shardings


def peak_flops(run: Run) -> float:
    """One device's peak FLOP/s: `log.peak_flops`, or a large matmul measured on this process's
    first device (the MFU denominator is this times the job's device count)."""
    if run.config.log.peak_flops:
        return run.config.log.peak_flops
    dtype = jnp.dtype(run.config.model.compute_dtype)
    return flops.matmul_flops_per_second(dtype=dtype)


def step_flops(run: Run, label_length: int | None = None) -> float:
    return flops.train_step_flops(
        run.student_checkpoint.config,
        run.teacher_checkpoint.config,
        run.config.train.batch_size,
        label_length or run.config.data.max_label_length,
        kl=run.settings.kl_weight > 0,
        encoder=not run.config.data.cache_encoder_outputs,
        train_encoder=not run.config.model.freeze_encoder,
        teacher_encoder="teacher_encoder" in run.models.frozen,
    )
