"""How clips are decoded (`DecodeOptions`) and sequential long-form's temperature fallback
(`Fallback`), checked when made: before any model loads."""

from __future__ import annotations

import dataclasses

from flax_distil.errors import FlaxDistilError
from flax_distil.tokenizer import DEFAULT_MAX_NEW_TOKENS

LONG_FORM_MODES = ("chunked", "sequential")
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclasses.dataclass(frozen=True)
class Fallback:
    """OpenAI's temperature fallback and no-speech skipping, for sequential long-form.

    A window is decoded at the first of `temperatures`, and again at the next one (sampled,
    seeded by `seed`) while its text's compression ratio is above `compression_ratio_threshold`
    or its average log-probability below `logprob_threshold`; a window whose no-speech
    probability is above `no_speech_threshold` while its average log-probability is below
    `logprob_threshold` is skipped as silence. None switches a test off; `temperatures=(0.0,)`
    never samples."""

    temperatures: tuple[float, ...] = FALLBACK_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    seed: int = 0

    def __post_init__(self):
        temperatures = tuple(float(t) for t in self.temperatures)
        object.__setattr__(self, "temperatures", temperatures)
        if not temperatures or min(temperatures) < 0 or list(temperatures) != sorted(temperatures):
            raise FlaxDistilError(
                "--temperatures must be rising values >= 0, e.g. 0,0.2,0.4,0.6,0.8,1.0"
            )
        if self.no_speech_threshold is not None and self.logprob_threshold is None:
            raise FlaxDistilError(
                "--no-speech-threshold needs --logprob-threshold (silence is a likely "
                "<|nospeech|> and an unlikely transcript)"
            )

    @property
    def scored(self) -> bool:
        """Whether a window's log-probabilities are needed."""
        return self.logprob_threshold is not None or self.no_speech_threshold is not None


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How clips are decoded. `long_form` (clips over 30 s): chunked or sequential; by default
    sequential with timestamps, chunked without; `fallback`: sequential long-form's."""

    batch_size: int = 8
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    language: str | None = None  # multilingual models detect it (per clip) when None
    task: str = "transcribe"
    timestamps: bool = False
    num_draft: int = 0  # > 0 with an assistant: speculative decoding (identical output)
    long_form: str | None = None
    chunk_seconds: float = 15.0  # chunked long-form window
    condition_on_previous: bool = True  # sequential: prompt with the text so far
    fallback: Fallback = Fallback()

    def __post_init__(self):
        if self.batch_size < 1:
            raise FlaxDistilError("--batch-size must be at least 1")
        if self.max_new_tokens < 1:
            raise FlaxDistilError("--max-new-tokens must be at least 1")
        if self.num_draft < 0:
            raise FlaxDistilError("--num-draft must be >= 0")
        if self.long_form not in (None, *LONG_FORM_MODES):
            raise FlaxDistilError(f"--long-form must be one of {', '.join(LONG_FORM_MODES)}")
        if self.timestamps and self.long_form == "chunked":
            raise FlaxDistilError(
                "chunked long-form gives no timestamps; use --long-form sequential"
            )

    @property
    def long_form_mode(self) -> str:
        return self.long_form or ("sequential" if self.timestamps else "chunked")

    def generate_kwargs(self) -> dict:
        return dict(
            language=self.language,
            task=self.task,
            max_new_tokens=self.max_new_tokens,
            num_draft=self.num_draft,
        )
