"""Import of CTranslate2 (faster-whisper) Whisper models, without needing ctranslate2 itself.

The `model.bin` layout follows ctranslate2's `specs/model_spec.py` (`_serialize`): a binary
version, the spec name and revision, then named variables (shape, dtype id, raw bytes), then
aliases. Whisper variables use CTranslate2's names (`encoder/layer_0/self_attention/linear_0`
for the fused q/k/v projection, `.../attention/linear_1` for the fused cross-attention k/v);
`ct2_to_hf_weights` splits them back into Hugging Face names. The directory's `config.json`
carries the generation settings (suppressed ids, alignment heads) and `tokenizer.json` the
vocabulary, which may lack the timestamp tokens.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from flax_distil.errors import FlaxDistilError
from flax_distil.interop.checkpoint import Checkpoint
from flax_distil.tokenizer import default_generation_config, load_tokenizer
from flax_distil.whisper import WhisperConfig

# Order of ctranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, ml_dtypes.bfloat16)
_SUPPORTED_BINARY_VERSIONS = range(5, 7)


class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data, self.offset, self.source = data, 0, source

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.data):
            raise FlaxDistilError(f"{self.source}: truncated CTranslate2 model file")
        (value,) = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return value

    def string(self) -> str:
        length = self.unpack("H")
        raw = self.take(length)
        return raw[:-1].decode("utf-8")

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise FlaxDistilError(f"{self.source}: truncated CTranslate2 model file")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk


def read_model_bin(data: bytes, source: str) -> tuple[str, dict[str, np.ndarray]]:
    """Parses a CTranslate2 `model.bin`; returns the spec name and its variables."""
    reader = _Reader(data, source)
    version = reader.unpack("I")
    if version not in _SUPPORTED_BINARY_VERSIONS:
        raise FlaxDistilError(
            f"{source}: not a CTranslate2 model (binary version {version}; "
            f"expected {_SUPPORTED_BINARY_VERSIONS.start}-{_SUPPORTED_BINARY_VERSIONS.stop - 1})"
        )
    spec_name = reader.string()
    reader.unpack("I")  # spec revision
    variables = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = tuple(reader.unpack("I") for _ in range(reader.unpack("B")))
        dtype_id = reader.unpack("B")
        raw = reader.take(reader.unpack("I"))
        if dtype_id >= len(_DTYPES):
            raise FlaxDistilError(f"{source}: variable {name} has unknown dtype id {dtype_id}")
        variables[name] = np.frombuffer(raw, dtype=_DTYPES[dtype_id]).reshape(shape)
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    return spec_name, variables


def _float32(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name + "_scale" in variables or variables[name].dtype == np.int8:
        raise FlaxDistilError(
            f"variable {name} is int8-quantised; convert the model with a float quantization "
            "(float32, float16 or bfloat16)"
        )
    return variables[name].astype(np.float32)


def _linear(out, variables, ct2_prefix, hf_prefix):
    out[f"{hf_prefix}.weight"] = _float32(variables, f"{ct2_prefix}/weight")
    out[f"{hf_prefix}.bias"] = _float32(variables, f"{ct2_prefix}/bias")


def _layer_norm(out, variables, ct2_prefix, hf_prefix):
    out[f"{hf_prefix}.weight"] = _float32(variables, f"{ct2_prefix}/gamma")
    out[f"{hf_prefix}.bias"] = _float32(variables, f"{ct2_prefix}/beta")


def _fused_projection(out, variables, ct2_linear, hf_attention, names):
    """Splits a fused projection into one HF linear per name; the key projection has no bias."""
    weight = _float32(variables, f"{ct2_linear}/weight")
    bias = _float32(variables, f"{ct2_linear}/bias")
    for name, w, b in zip(
        names, np.split(weight, len(names)), np.split(bias, len(names)), strict=True
    ):
        out[f"{hf_attention}.{name}.weight"] = w
        if name != "k_proj":
            out[f"{hf_attention}.{name}.bias"] = b
        elif np.any(b):
            raise FlaxDistilError(f"{ct2_linear}: non-zero key bias; Whisper has none")


def _self_attention(out, variables, ct2, hf):
    _fused_projection(out, variables, f"{ct2}/linear_0", hf, ("q_proj", "k_proj", "v_proj"))
    _linear(out, variables, f"{ct2}/linear_1", f"{hf}.out_proj")


def _cross_attention(out, variables, ct2, hf):
    _linear(out, variables, f"{ct2}/linear_0", f"{hf}.q_proj")
    _fused_projection(out, variables, f"{ct2}/linear_1", hf, ("k_proj", "v_proj"))
    _linear(out, variables, f"{ct2}/linear_2", f"{hf}.out_proj")


def ct2_to_hf_weights(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames CTranslate2 Whisper variables to Hugging Face names, splitting fused projections."""
    out: dict[str, np.ndarray] = {}
    for side in ("encoder", "decoder"):
        for n in range(_count_layers(variables, side)):
            ct2, hf = f"{side}/layer_{n}", f"model.{side}.layers.{n}"
            _self_attention(out, variables, f"{ct2}/self_attention", f"{hf}.self_attn")
            _layer_norm(
                out, variables, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm"
            )
            if side == "decoder":
                _cross_attention(out, variables, f"{ct2}/attention", f"{hf}.encoder_attn")
                _layer_norm(
                    out, variables, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm"
                )
            _linear(out, variables, f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            _linear(out, variables, f"{ct2}/ffn/linear_1", f"{hf}.fc2")
            _layer_norm(out, variables, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
        _layer_norm(out, variables, f"{side}/layer_norm", f"model.{side}.layer_norm")
        out[f"model.{side}.embed_positions.weight"] = _float32(
            variables, f"{side}/position_encodings/encodings"
        )
    for conv in ("conv1", "conv2"):
        _linear(out, variables, f"encoder/{conv}", f"model.encoder.{conv}")
    out["model.decoder.embed_tokens.weight"] = _float32(variables, "decoder/embeddings/weight")
    return out


def _count_layers(variables, side: str) -> int:
    pattern = re.compile(rf"^{side}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    return max(indices) + 1 if indices else 0


def _architecture(variables, tokenizer) -> WhisperConfig:
    ids = tokenizer.convert_tokens_to_ids
    vocab_size, d_model = variables["decoder/embeddings/weight"].shape
    end_of_text = ids("<|endoftext|>")
    return WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=_count_layers(variables, "encoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_layers=_count_layers(variables, "decoder"),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        pad_token_id=end_of_text,
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
        decoder_start_token_id=ids("<|startoftranscript|>"),
    )


def load_ct2_checkpoint(directory: Path, model_bytes: bytes | None = None) -> Checkpoint:
    """Reads a CTranslate2 Whisper directory (`model.bin`, `config.json`, `tokenizer.json`).

    `model_bytes` replaces `model.bin` for bundles that ship it split in parts.
    """
    directory = Path(directory)
    model_path = directory / "model.bin"
    if model_bytes is None:
        model_bytes = model_path.read_bytes()
    spec_name, variables = read_model_bin(model_bytes, str(model_path))
    if spec_name != "WhisperSpec":
        raise FlaxDistilError(f"{model_path}: a CTranslate2 {spec_name}, not a Whisper model")
    tokenizer_path = directory / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise FlaxDistilError(f"{directory}: tokenizer.json is missing")
    tokenizer = load_tokenizer(tokenizer_path)
    ct2_config = json.loads((directory / "config.json").read_text())
    try:
        config = _architecture(variables, tokenizer)
        weights = ct2_to_hf_weights(variables)
    except KeyError as missing:
        raise FlaxDistilError(f"{model_path}: variable {missing} missing") from None
    generation = default_generation_config(
        config,
        tokenizer,
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", []),
        alignment_heads=ct2_config.get("alignment_heads"),
    )
    return Checkpoint(config, weights, tokenizer, generation, source=str(directory))
