"""Pseudo-labelling throughput: flax-distil `pseudo_label` vs faster-whisper, tiny.en; and
flax-distil's bfloat16 labels against its float32 ones (WER and speed).

    .venv/bin/python run_scripts/bench_pseudo_label.py [--threads 2] [--batch-size 16]
        [--dtypes float32,bfloat16]

Same machine, same run, same 200 demo utterances (Piper speech, synthesised once into
--data), each side pinned to the same cores:
- flax-distil: the whole `pseudo_label` call (read and decode the FLAC files, log-mel, batched
  greedy decoding at batch 16, WER, parquet shards, summary), after a warm-up run on 24 of the
  utterances that compiles both batch buckets;
- faster-whisper float32 (CTranslate2): file by file, read with soundfile (as flax-distil does)
  and `transcribe`d with beam 1, no timestamps, no temperature fallback, no VAD, no
  conditioning on previous text, after one warm-up file.
Throughput is audio seconds per wall second; the target is >= 2x faster-whisper. Each dtype
in --dtypes is a flax-distil run of its own (weights, computation and KV caches in it; logit
rules in float32): bfloat16 is what accelerators label with by default, and its WER must stay
within 0.5 points of float32's (on a CPU without bfloat16 matrix units it is also slower).
"""

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_common import pin_threads

DEFAULT_DATA = Path(tempfile.gettempdir()) / "flax-distil-bench-demo-200"


def demo_data(directory: Path, count: int) -> list[tuple[Path, str]]:
    """(audio file, text) of `count` demo utterances, synthesised on first use."""
    from flax_distil.demo_speech import make_demo_data

    if not (directory / "metadata.csv").is_file():
        make_demo_data(directory, count, seed=0)
    with (directory / "metadata.csv").open(newline="") as handle:
        rows = [(directory / row["file_name"], row["text"]) for row in csv.DictReader(handle)]
    if len(rows) != count:
        sys.exit(f"error: {directory} holds {len(rows)} utterances, not {count}; delete it")
    return rows


def subset(rows, count: int, directory: Path) -> Path:
    """An audiofolder of the first `count` rows (absolute paths into the full set)."""
    directory.mkdir(parents=True)
    with (directory / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        writer.writerows([str(path), text] for path, text in rows[:count])
    return directory


def ours(data_dir: Path, rows, batch_size: int, work: Path, dtype: str):
    from flax_distil.data import SourceSpec
    from flax_distil.generation import Transcriber
    from flax_distil.pseudo_label import PseudoLabelOptions, pseudo_label

    transcriber = Transcriber.load("pypi:tiny.en", dtype=dtype)
    work = work / dtype
    options = PseudoLabelOptions(batch_size=batch_size)
    warm_up = SourceSpec("audiofolder", str(subset(rows, 24, work / "warm-up-data")))
    pseudo_label(transcriber, warm_up, work / "warm-up-labels", options)
    started = time.perf_counter()
    summary = pseudo_label(
        transcriber, SourceSpec("audiofolder", str(data_dir)), work / "labels", options
    )
    seconds = time.perf_counter() - started
    import pyarrow.parquet as pq

    table = pq.ParquetDataset(sorted(map(str, (work / "labels").glob("*.parquet")))).read()
    texts = dict(
        zip(table["file_name"].to_pylist(), table["whisper_transcript"].to_pylist(), strict=True)
    )
    return seconds, summary, texts


def faster_whisper(rows, threads: int, work: Path):
    from faster_whisper import WhisperModel

    from flax_distil.audio import load_audio
    from flax_distil.interop import pypi_model_files

    directory = work / "tiny.en-ct2"
    shutil.copytree(pypi_model_files("tiny.en")[0], directory)
    model = WhisperModel(str(directory), device="cpu", compute_type="float32", cpu_threads=threads)

    def transcribe(path):
        # Decoded with soundfile as ours is: faster-whisper's PyAV path fails with av 19.
        segments, _ = model.transcribe(
            load_audio(path),
            beam_size=1,
            without_timestamps=True,
            condition_on_previous_text=False,
            temperature=0.0,
            vad_filter=False,
        )
        return " ".join(segment.text.strip() for segment in segments)

    transcribe(rows[0][0])  # warm-up
    started = time.perf_counter()
    texts = [transcribe(path) for path, _ in rows]
    return time.perf_counter() - started, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="demo utterances (cache)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="flax-distil runs")
    args = parser.parse_args()
    pin_threads(args.threads)

    from flax_distil.audio import load_audio
    from flax_distil.metrics import normalize, percent, word_error_rate

    rows = demo_data(args.data, 200)
    audio_seconds = sum(len(load_audio(path)) for path, _ in rows) / 16000
    names = [str(path.relative_to(args.data)) for path, _ in rows]
    references = [text for _, text in rows]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes.split(","):
            seconds, summary, by_file = ours(args.data, rows, args.batch_size, Path(tmp), dtype)
            runs[dtype] = (seconds, summary, [by_file[name] for name in names])
        fw_s, fw_texts = faster_whisper(rows, args.threads, Path(tmp))

    print(f"\npseudo-labelling, tiny.en, {len(rows)} demo utterances ({audio_seconds:.0f} s)")
    measured = [
        (f"flax-distil pseudo_label {dtype}, batch {args.batch_size}", seconds, texts)
        for dtype, (seconds, _, texts) in runs.items()
    ]
    for name, seconds, texts in [
        *measured,
        ("faster-whisper float32, file by file", fw_s, fw_texts),
    ]:
        print(
            f"  {name:48s} {seconds:7.1f} s  {audio_seconds / seconds:6.1f} audio s/s"
            f"  WER {percent(word_error_rate(references, texts))}"
        )
    for dtype, (seconds, summary, texts) in runs.items():
        same = sum(normalize(a) == normalize(b) for a, b in zip(texts, fw_texts, strict=True))
        print(
            f"  {dtype}: {fw_s / seconds:.2f}x faster-whisper's speed (target >= 2x); "
            f"{same} of {len(rows)} normalised transcripts identical to it; mean WER "
            f"{percent(summary['mean_wer'])}, {summary['kept']} within 10% WER"
        )
    if {"float32", "bfloat16"} <= set(runs):
        wers = {d: word_error_rate(references, runs[d][2]) for d in ("float32", "bfloat16")}
        print(
            f"  bfloat16 - float32: {100 * (wers['bfloat16'] - wers['float32']):+.2f} WER points "
            f"(target within 0.5); bfloat16 takes {runs['bfloat16'][0] / runs['float32'][0]:.2f}x "
            "float32's time"
        )


if __name__ == "__main__":
    sys.exit(main())
