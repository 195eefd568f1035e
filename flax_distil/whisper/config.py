"""`WhisperConfig`: the architecture of a Whisper model, read from and written to Hugging Face's
`config.json` fields, or named by size (`WhisperConfig.named("large-v3")`) to plan without
weights."""

from __future__ import annotations

import dataclasses
from typing import Any

from flax_distil.errors import FlaxDistilError

ACTIVATION = "gelu"  # every released Whisper uses exact (erf) GELU
LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class WhisperConfig:
    """Architecture of a Whisper model; field names follow `transformers.WhisperConfig`."""

    vocab_size: int = 51865
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    decoder_ffn_dim: int = 1536
    max_source_positions: int = 1500
    max_target_positions: int = 448
    scale_embedding: bool = False
    pad_token_id: int = 50257
    bos_token_id: int = 50257
    eos_token_id: int = 50257
    decoder_start_token_id: int = 50258

    def __post_init__(self):
        for heads_field in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, heads_field)
            if heads <= 0 or self.d_model % heads:
                raise FlaxDistilError(
                    f"d_model={self.d_model} is not divisible by {heads_field}={heads}"
                )
        for name in ("encoder_layers", "decoder_layers", "vocab_size", "num_mel_bins"):
            if getattr(self, name) <= 0:
                raise FlaxDistilError(f"WhisperConfig.{name} must be positive")

    @property
    def num_frames(self) -> int:
        """Log-mel frames the encoder expects (two per encoder position)."""
        return 2 * self.max_source_positions

    @property
    def is_multilingual(self) -> bool:
        return self.vocab_size >= 51865

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> WhisperConfig:
        """Builds the config from a Hugging Face `config.json` dict, rejecting non-Whisper ones."""
        if hf.get("model_type") != "whisper":
            raise FlaxDistilError(
                f"{source}: model_type is {hf.get('model_type')!r}, not 'whisper'; "
                "point at a Whisper checkpoint"
            )
        activation = hf.get("activation_function", ACTIVATION)
        if activation != ACTIVATION:
            raise FlaxDistilError(f"{source}: activation_function {activation!r} is not supported")
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: hf[name] for name in names if hf.get(name) is not None})

    def to_hf_dict(self) -> dict[str, Any]:
        """The fields a Hugging Face `config.json` needs to rebuild this architecture."""
        return {
            **dataclasses.asdict(self),
            "model_type": "whisper",
            "architectures": ["WhisperForConditionalGeneration"],
            "activation_function": ACTIVATION,
            "num_hidden_layers": self.encoder_layers,
            "tie_word_embeddings": True,
        }

    @classmethod
    def named(cls, size: str) -> WhisperConfig:
        """The architecture of an OpenAI release by size name: tiny, base, small, medium (each
        also .en), large-v2, large-v3, large-v3-turbo."""
        english = size.endswith(".en")
        shape = _SIZES.get(size.removesuffix(".en"))
        if shape is None or (english and size.startswith("large")):
            known = ", ".join([*_SIZES, *(f"{n}.en" for n in _SIZES if not n.startswith("large"))])
            raise FlaxDistilError(f"unknown Whisper size {size!r}; use one of {known}")
        d_model, layers, heads, extra = shape
        tokens = _ENGLISH_TOKENS if english else _MULTILINGUAL_TOKENS
        return cls(
            d_model=d_model,
            encoder_layers=layers,
            decoder_layers=extra.get("decoder_layers", layers),
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=4 * d_model,
            decoder_ffn_dim=4 * d_model,
            num_mel_bins=extra.get("num_mel_bins", 80),
            vocab_size=51864 if english else extra.get("vocab_size", 51865),
            **tokens,
        )


# size: (d_model, layers, heads, differences), as the released config.json files have them
_SIZES = {
    "tiny": (384, 4, 6, {}),
    "base": (512, 6, 8, {}),
    "small": (768, 12, 12, {}),
    "medium": (1024, 24, 16, {}),
    "large-v2": (1280, 32, 20, {}),
    "large-v3": (1280, 32, 20, {"num_mel_bins": 128, "vocab_size": 51866}),
    "large-v3-turbo": (
        1280,
        32,
        20,
        {"num_mel_bins": 128, "vocab_size": 51866, "decoder_layers": 4},
    ),
}
_ENGLISH_TOKENS = dict(
    pad_token_id=50256, bos_token_id=50256, eos_token_id=50256, decoder_start_token_id=50257
)
_MULTILINGUAL_TOKENS = dict(
    pad_token_id=50257, bos_token_id=50257, eos_token_id=50257, decoder_start_token_id=50258
)
