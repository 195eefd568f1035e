"""The large-v3 -> 2-layer distillation step on one accelerator: MFU and memory, as configured.

    .venv/bin/python run_scripts/bench_gpu.py [--checkpoint DIR] [--batch 64] [--steps 10]
    .venv/bin/python run_scripts/bench_gpu.py --tiny        # small shapes: checks it on a CPU

Settings come from `configs/distil_large_v3_2dec.yaml` (bf16 compute with float32 master
weights, decoder remat, 0.8 CE + 1.0 T^2 KL with T = 2, AdamW with clipping, log-mel on the
device, max_label_length 128); `key=value` arguments override it like `flax-distil train`'s.
Without --checkpoint the teacher has random weights of large-v3's shapes (d_model 1280, 32 + 32
layers, 20 heads, ffn 5120, 128 mels, vocab 51866), and the student is built from it the way
`make_student` does (encoder copied and shared, decoder layers 0 and 31 copied).

Prints: the compiled step's per-device memory (`train.run.describe`: what `--dry-run` prints)
next to the measured peak (`memory_stats()['peak_bytes_in_use']`), the median step time, counted
model FLOP/s, and MFU against a bf16 matmul measured in the same process.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LARGE_V3 = dict(
    vocab_size=51866,
    num_mel_bins=128,
    d_model=1280,
    encoder_layers=32,
    encoder_attention_heads=20,
    encoder_ffn_dim=5120,
    decoder_layers=32,
    decoder_attention_heads=20,
    decoder_ffn_dim=5120,
)
TINY = dict(
    LARGE_V3,
    d_model=64,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=256,
    decoder_layers=4,
    decoder_attention_heads=4,
    decoder_ffn_dim=256,
)


def random_models(shapes: dict, config, student_layers: int):
    """A random teacher of the given shapes and a student made from it like `make_student`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from flax_distil.student import spaced_layers
    from flax_distil.whisper import Whisper, WhisperConfig

    teacher_config = WhisperConfig(**shapes)
    layer_ids = spaced_layers(teacher_config.decoder_layers, student_layers)
    student_config = dataclasses.replace(teacher_config, decoder_layers=len(layer_ids))
    dtype = jnp.dtype(config.model.compute_dtype)
    teacher = Whisper(teacher_config, dtype=dtype, rngs=nnx.Rngs(0))
    student = Whisper(student_config, dtype=dtype, **remat(config), rngs=nnx.Rngs(1))

    def copy(module):  # own buffers: the student's decoder is donated, the teacher's is not
        return jax.tree.map(jnp.copy, nnx.state(module))

    nnx.update(student.encoder, nnx.state(teacher.encoder))  # shared and frozen
    decoder_s, decoder_t = student.decoder, teacher.decoder
    nnx.update(decoder_s.embed_tokens, copy(decoder_t.embed_tokens))
    nnx.update(decoder_s.layer_norm, copy(decoder_t.layer_norm))
    decoder_s.embed_positions[...] = jnp.copy(decoder_t.embed_positions[...])
    for index, teacher_index in enumerate(layer_ids):
        nnx.update(decoder_s.layers[index], copy(decoder_t.layers[teacher_index]))
    return student, teacher


def checkpoint_models(path: str, config, student_layers: int):
    import jax.numpy as jnp

    from flax_distil.interop import build_model, load_checkpoint
    from flax_distil.student import make_student, spaced_layers

    teacher_ckpt = load_checkpoint(path)
    layers = spaced_layers(teacher_ckpt.config.decoder_layers, student_layers)
    student_ckpt = make_student(teacher_ckpt, decoder_layer_ids=layers)
    dtype = jnp.dtype(config.model.compute_dtype)
    student = build_model(student_ckpt, dtype=dtype, **remat(config))
    return student, build_model(teacher_ckpt, dtype=dtype)


def remat(config) -> dict:
    return dict(remat_encoder=config.model.remat_encoder, remat_decoder=config.model.remat_decoder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="teacher (HF dir or hub id); default: random")
    parser.add_argument("--config", default=str(REPO / "configs/distil_large_v3_2dec.yaml"))
    parser.add_argument("--batch", type=int, help="per device (default 64; 2 with --tiny)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after a warm-up)")
    parser.add_argument("--tiny", action="store_true", help="small shapes, for a CPU check")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from flax_distil import parallel
    from flax_distil.audio import float_to_pcm16
    from flax_distil.train import flops, load_config
    from flax_distil.train import run as runs
    from flax_distil.train.optimizer import make_optimizer
    from flax_distil.train.plan import describe_run
    from flax_distil.train.step import DistillModels, jit_train_step

    config = load_config(args.config, args.overrides)
    devices = jax.devices()[:1]
    per_device = args.batch or (2 if args.tiny else 64)
    config = dataclasses.replace(
        config,
        train=dataclasses.replace(config.train, batch_size=per_device),
        mesh=dataclasses.replace(config.mesh, data=1, fsdp=1),
    )
    if args.tiny:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, max_label_length=16)
        )
    model = config.model
    print(f"device: {devices[0].device_kind} ({devices[0].platform}), jax {jax.__version__}")
    started = time.perf_counter()
    if args.checkpoint:
        student, teacher = checkpoint_models(args.checkpoint, config, model.student_decoder_layers)
    else:
        shapes = TINY if args.tiny else LARGE_V3
        student, teacher = random_models(shapes, config, model.student_decoder_layers)
    student_config, teacher_config = student.config, teacher.config
    models = DistillModels.build(student, teacher, freeze_encoder=model.freeze_encoder)
    del student, teacher  # the teacher's encoder (the student's copy is shared) can go
    settings = runs.step_settings(config, student_config.num_mel_bins)
    mesh = parallel.make_mesh(1, 1, devices)
    run = runs.Run(config, Path("."), None, None, models, mesh, settings, [])
    optimizer, schedule = make_optimizer(config.train)
    state, _ = runs.sharded_state(run, optimizer)
    shapes = runs.batch_shapes(run)
    print(f"models built in {time.perf_counter() - started:.0f} s")

    started = time.perf_counter()
    step = jit_train_step(models, settings, optimizer, schedule, mesh, state, shapes)
    compiled = step.lower(state, models.frozen, shapes).compile()
    print(f"compiled in {time.perf_counter() - started:.0f} s")
    print(describe_run(run, state, compiled))

    rng = np.random.default_rng(0)
    batch_size, length = config.train.batch_size, config.data.max_label_length
    host = {}
    for name, shape in shapes.items():
        if name in ("audio", "features"):
            host[name] = (0.1 * rng.standard_normal(shape.shape)).astype(np.float32)
            if name == "audio":  # the step takes int16 PCM, as `Batches` makes it
                host[name] = float_to_pcm16(host[name])
        elif name == "loss_mask":
            host[name] = np.ones(shape.shape, np.float32)
        else:
            host[name] = rng.integers(0, 50257, shape.shape).astype(np.int32)
    batch = {name: jax.device_put(value, shapes[name].sharding) for name, value in host.items()}
    device = devices[0]
    resident = (device.memory_stats() or {}).get("bytes_in_use")

    state, metrics = compiled(state, models.frozen, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        state, metrics = compiled(state, models.frozen, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    step_s = statistics.median(times)
    loss = float(metrics["loss"])
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use")

    compute = jnp.dtype(model.compute_dtype)
    matmul_size = 1024 if args.tiny else 8192
    matmul = flops.matmul_flops_per_second(size=matmul_size, dtype=compute, repeats=20)
    step_flops = flops.train_step_flops(
        student_config, teacher_config, batch_size, length, kl=settings.kl_weight > 0
    )
    achieved = step_flops / step_s

    def gib(value):
        return (
            "n/a (this backend reports no memory stats)"
            if value is None
            else (f"{value / 2**30:.2f} GiB")
        )

    print(
        f"\nlarge-v3 shapes{' (--tiny)' if args.tiny else ''} -> {student_config.decoder_layers}"
        f"-layer student, batch {batch_size} on one device, max_label_length {length}, "
        f"{model.compute_dtype} compute, remat decoder={model.remat_decoder}, "
        f"log-mel on {config.data.features_on}"
    )
    print(f"  step time (median of {args.steps})   {step_s * 1e3:10.1f} ms   (loss {loss:.3f})")
    print(f"  samples/s                        {batch_size / step_s:10.1f}")
    print(f"  counted FLOPs per step           {step_flops / 1e9:10,.1f} GFLOP")
    print(f"  achieved                         {achieved / 1e9:10,.1f} GFLOP/s")
    print(f"  {matmul_size}^3 {compute} matmul (XLA)   {matmul / 1e9:10,.1f} GFLOP/s")
    print(f"  model FLOPs utilisation          {achieved / matmul:10.1%}   (target >= 45%)")
    print(f"  memory in use before the step    {gib(resident)}")
    print(f"  measured peak memory             {gib(peak)}   (vs the describe line above)")
    return 0 if np.isfinite(loss) else 1


if __name__ == "__main__":
    sys.exit(main())
