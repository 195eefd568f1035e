"""The in-memory checkpoint every format converts through, and its mapping onto the NNX model.

A `Checkpoint` holds Hugging Face-named numpy weights (`model.encoder.layers.0.fc1.weight`, in
PyTorch layout), the architecture, the tokenizer and the generation settings. Importers
(Hugging Face, CTranslate2) produce one; the exporter writes one; `build_model` and
`checkpoint_from_model` move it in and out of a `Whisper` module. Keeping one intermediate form
means each format needs only a reader or writer, and the NNX <-> HF rename lives in one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_distil.errors import FlaxDistilError
from flax_distil.whisper import Whisper, WhisperConfig

# NNX leaf names that Hugging Face calls `weight`.
_HF_WEIGHT_LEAVES = {"kernel", "scale", "embedding"}
# Present in some HF checkpoints; tied to the token embedding, so never stored separately here.
TIED_OUTPUT_PROJECTION = "proj_out.weight"


@dataclasses.dataclass
class Checkpoint:
    """Weights (HF names and layout), architecture, tokenizer and generation settings."""

    config: WhisperConfig
    weights: dict[str, np.ndarray]
    tokenizer: Any = None  # transformers.WhisperTokenizer, when the source has one
    generation: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "checkpoint"


def hf_name(path: tuple) -> str:
    """('encoder', 'layers', 0, 'fc1', 'kernel') -> 'model.encoder.layers.0.fc1.weight'."""
    parts = [str(p) for p in path]
    if parts[-1] in _HF_WEIGHT_LEAVES:
        parts[-1] = "weight"
    elif parts[-1] == "embed_positions":  # a bare Param here, an nn.Embedding in PyTorch
        parts.append("weight")
    return "model." + ".".join(parts)


def to_hf_layout(array: np.ndarray, path: tuple) -> np.ndarray:
    """NNX kernels are [in, out] (dense), [width, in, out] (conv); PyTorch stores them reversed."""
    if path[-1] == "kernel":
        return np.ascontiguousarray(np.transpose(array))
    return array


def from_hf_layout(array: np.ndarray, path: tuple) -> np.ndarray:
    return to_hf_layout(array, path)  # a full transpose is its own inverse


def _path_of(key_path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in key_path)


def build_model(
    checkpoint: Checkpoint,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    remat_encoder: bool = False,
    remat_decoder: bool = False,
) -> Whisper:
    """Creates a `Whisper` holding the checkpoint's weights, without a random initialisation."""
    options = dict(
        dtype=dtype,
        param_dtype=param_dtype,
        remat_encoder=remat_encoder,
        remat_decoder=remat_decoder,
    )
    abstract = nnx.eval_shape(lambda: Whisper(checkpoint.config, **options, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    weights = dict(checkpoint.weights)
    _drop_tied_projection(weights, checkpoint.source)
    missing = []

    def load_leaf(key_path, abstract_leaf):
        path = _path_of(key_path)
        name = hf_name(path)
        if name not in weights:
            missing.append(name)
            return abstract_leaf
        array = from_hf_layout(np.asarray(weights.pop(name)), path)
        if array.shape != abstract_leaf.shape:
            raise FlaxDistilError(
                f"{checkpoint.source}: weight {name} has shape {array.shape}, expected "
                f"{abstract_leaf.shape} for this config"
            )
        return jnp.asarray(array, dtype=abstract_leaf.dtype)

    params = jax.tree_util.tree_map_with_path(load_leaf, nnx.to_pure_dict(state))
    if missing:
        raise FlaxDistilError(
            f"{checkpoint.source}: {len(missing)} weights missing, e.g. {', '.join(missing[:3])}; "
            "is this a complete Whisper checkpoint?"
        )
    if weights:
        raise FlaxDistilError(
            f"{checkpoint.source}: {len(weights)} unexpected weights, e.g. "
            f"{', '.join(sorted(weights)[:3])}; is this a Whisper checkpoint?"
        )
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def _drop_tied_projection(weights: dict[str, np.ndarray], source: str) -> None:
    projection = weights.pop(TIED_OUTPUT_PROJECTION, None)
    embedding = weights.get("model.decoder.embed_tokens.weight")
    if (
        projection is not None
        and embedding is not None
        and not np.array_equal(projection, embedding)
    ):
        raise FlaxDistilError(
            f"{source}: proj_out.weight differs from the token embedding; untied output "
            "projections are not supported"
        )


def model_weights(model: Whisper) -> dict[str, np.ndarray]:
    """The model's parameters as HF-named numpy arrays in PyTorch layout."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    weights = {}
    for key_path, leaf in leaves:
        path = _path_of(key_path)
        weights[hf_name(path)] = to_hf_layout(np.asarray(leaf), path)
    return weights


def checkpoint_from_model(model: Whisper, like: Checkpoint | None = None) -> Checkpoint:
    """Wraps a model's weights as a checkpoint, keeping tokenizer and generation from `like`."""
    return Checkpoint(
        config=model.config,
        weights=model_weights(model),
        tokenizer=like.tokenizer if like else None,
        generation=dict(like.generation) if like else {},
        source=like.source if like else "model",
    )
