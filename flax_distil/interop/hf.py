"""Hugging Face Whisper directories: read (safetensors, sharded or not) and write.

Reading never unpickles: PyTorch `.bin` weights load only with `allow_pickle=True`, and then
need torch. Writing produces what `WhisperForConditionalGeneration.from_pretrained` and
`AutoProcessor.from_pretrained` expect: `config.json`, `generation_config.json`,
`model.safetensors`, the tokenizer files and `preprocessor_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

from flax_distil.errors import FlaxDistilError
from flax_distil.interop.checkpoint import TIED_OUTPUT_PROJECTION, Checkpoint
from flax_distil.tokenizer import load_tokenizer
from flax_distil.whisper import WhisperConfig

SAVE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FlaxDistilError(f"{path}: cannot read JSON ({error})") from error


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises SafetensorError and OSError variants
        raise FlaxDistilError(
            f"{path}: corrupt or truncated safetensors file ({error}); download it again"
        ) from error


def _read_pickled(directory: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise FlaxDistilError(
            f"{directory}: reading PyTorch .bin weights needs torch (pip install torch)"
        ) from None
    index = directory / "pytorch_model.bin.index.json"
    files = (
        sorted(set(_read_json(index)["weight_map"].values()))
        if index.is_file()
        else ["pytorch_model.bin"]
    )
    weights = {}
    for name in files:
        state = torch.load(directory / name, map_location="cpu", weights_only=True)
        weights.update({k: v.float().numpy() for k, v in state.items()})
    return weights


def read_hf_weights(directory: Path, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """All weight tensors of a Hugging Face directory, as numpy arrays keyed by HF name."""
    if (directory / _SAFETENSORS).is_file():
        return _read_safetensors(directory / _SAFETENSORS)
    if (directory / _SAFETENSORS_INDEX).is_file():
        index = _read_json(directory / _SAFETENSORS_INDEX)
        weights = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            if not (directory / shard).is_file():
                raise FlaxDistilError(f"{directory}: shard {shard} named in the index is missing")
            weights.update(_read_safetensors(directory / shard))
        return weights
    if any((directory / name).is_file() for name in _PICKLE_FILES):
        if not allow_pickle:
            raise FlaxDistilError(
                f"{directory}: only PyTorch pickle weights (.bin) found; loading them runs "
                "arbitrary code, so pass allow_pickle=True (--allow-pickle) if you trust them"
            )
        return _read_pickled(directory)
    raise FlaxDistilError(f"{directory}: no model.safetensors or model.safetensors.index.json")


def _upcast(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Half-precision checkpoints load as float32; float32 ones are kept as they are."""
    return {k: v if v.dtype == np.float32 else v.astype(np.float32) for k, v in weights.items()}


def load_hf_checkpoint(directory: Path, allow_pickle: bool = False) -> Checkpoint:
    """Reads a Hugging Face Whisper directory into a `Checkpoint`."""
    directory = Path(directory)
    config_path = directory / "config.json"
    config = WhisperConfig.from_hf_dict(_read_json(config_path), source=str(config_path))
    weights = _upcast(read_hf_weights(directory, allow_pickle))
    tokenizer = None
    if (directory / "tokenizer.json").is_file() or (directory / "vocab.json").is_file():
        tokenizer = load_tokenizer(directory)
    generation_path = directory / "generation_config.json"
    generation = _read_json(generation_path) if generation_path.is_file() else {}
    return Checkpoint(config, weights, tokenizer, generation, source=str(directory))


def save_hf_checkpoint(checkpoint: Checkpoint, output_dir: Path, dtype: str = "float32") -> Path:
    """Writes a directory that transformers loads as `WhisperForConditionalGeneration`."""
    from safetensors.numpy import save_file

    if dtype not in SAVE_DTYPES:
        raise FlaxDistilError(f"unknown dtype {dtype!r}; use one of {', '.join(SAVE_DTYPES)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = checkpoint.config
    hf_config = {**config.to_hf_dict(), "torch_dtype": dtype}
    (output_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if checkpoint.generation:
        generation = {**checkpoint.generation, "transformers_version": _transformers_version()}
        (output_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_dtype = SAVE_DTYPES[dtype]
    tensors = {
        name: np.ascontiguousarray(array.astype(save_dtype, copy=False))
        for name, array in checkpoint.weights.items()
        if name != TIED_OUTPUT_PROJECTION
    }
    save_file(tensors, str(output_dir / _SAFETENSORS), metadata={"format": "pt"})
    if checkpoint.tokenizer is not None:
        checkpoint.tokenizer.save_pretrained(str(output_dir))
    _save_preprocessor(config, output_dir)
    return output_dir


def _save_preprocessor(config: WhisperConfig, output_dir: Path) -> None:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(
        feature_size=config.num_mel_bins, chunk_length=config.num_frames // 100
    )
    extractor.save_pretrained(str(output_dir))


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
