"""Whisper in Flax NNX: `WhisperConfig` (the architecture), `layers` (attention and the encoder
and decoder layers) and `model` (`Whisper`: encoder, teacher-forced and incremental decoding).

    model = Whisper(config, rngs=nnx.Rngs(0))
    logits = model.decode(tokens, model.encode(features))
"""

from flax_distil.whisper.config import WhisperConfig
from flax_distil.whisper.layers import write_rows
from flax_distil.whisper.model import DecoderCache, LayerCache, Whisper, count_parameters

__all__ = [
    "DecoderCache",
    "LayerCache",
    "Whisper",
    "WhisperConfig",
    "count_parameters",
    "write_rows",
]
