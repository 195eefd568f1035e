"""Decoding raw examples, fixing what can be fixed and naming why the rest is skipped.

Multi-channel audio is down-mixed and other sample rates resampled (fixed); unreadable,
truncated, missing, empty, silent, non-finite, too short or too long audio and empty or
non-string labels are skipped with a reason, so one bad file in a large corpus never stops a run.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import os

import numpy as np

from flax_distil.audio import SAMPLE_RATE, prepare_audio
from flax_distil.data.sources import RawExample
from flax_distil.errors import FlaxDistilError
from flax_distil.metrics import label_wer

log = logging.getLogger(__name__)

SKIP_REASONS = (
    "missing_file",
    "unreadable_audio",
    "empty_audio",
    "non_finite_audio",
    "silent_audio",
    "too_short",
    "too_long",
    "bad_label",
    "label_too_long",
    "wer_above_threshold",
)


FILTER_REASONS = ("wer_above_threshold",)  # deliberate filtering, not broken input


@dataclasses.dataclass(frozen=True)
class ExampleFilter:
    min_seconds: float = 0.0
    max_seconds: float = 30.0
    silence_peak: float = 1e-4  # a peak amplitude below this is silence


@dataclasses.dataclass
class Example:
    id: str
    audio: np.ndarray  # mono float32 at 16 kHz
    text: str
    token_ids: list[int] | None = None  # the label as token ids (timestamps kept), if given
    # What was said just before, for previous-text prompts: its token ids (timestamps kept) or
    # its text.
    previous: list[int] | str | None = None
    language: str | None = None  # of the source (None: the training default)
    task: str = "transcribe"


class Skipped(Exception):
    """An example that cannot be used; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, example_id: str, detail: str = ""):
        super().__init__(f"{example_id}: {reason}{f' ({detail})' if detail else ''}")
        self.reason, self.example_id, self.detail = reason, example_id, detail

    def __reduce__(self):  # sent back from decoding workers (`data.workers`)
        return Skipped, (self.reason, self.example_id, self.detail)


def _read(raw: RawExample) -> tuple[np.ndarray, int]:
    import soundfile

    if raw.audio_bytes:
        source = io.BytesIO(raw.audio_bytes)
    elif raw.audio_path and os.path.isfile(raw.audio_path):
        source = raw.audio_path
    else:
        raise Skipped("missing_file", raw.id, str(raw.audio_path))
    try:
        return soundfile.read(source, dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile's errors for unreadable or truncated data
        raise Skipped("unreadable_audio", raw.id, str(error)[:120]) from None


def decode_example(raw: RawExample, limits: ExampleFilter | None = None) -> Example:
    """The usable example, or raises `Skipped` with the reason."""
    if not isinstance(raw.text, str) or not raw.text.strip():
        raise Skipped("bad_label", raw.id, f"label {raw.text!r}")
    if raw.wer_threshold is not None:  # before decoding: rejected audio is never decoded
        # A stored WER (pseudo-label output's `wer` column) is used as is; NaN never passes.
        wer = label_wer(raw.ground_truth, raw.text) if raw.stored_wer is None else raw.stored_wer
        if not wer <= raw.wer_threshold:
            raise Skipped("wer_above_threshold", raw.id, f"WER {wer:.3f}")
    return Example(
        raw.id,
        decode_audio(raw, limits),
        raw.text.strip(),
        token_ids=None if raw.token_ids is None else [int(t) for t in raw.token_ids],
        previous=_previous(raw.previous),
        language=raw.language,
        task=raw.task,
    )


def _previous(previous) -> list[int] | str | None:
    if isinstance(previous, str):
        return previous if previous.strip() else None
    if previous is not None and len(previous):
        return [int(t) for t in previous]
    return None


def decode_audio(raw: RawExample, limits: ExampleFilter | None = None) -> np.ndarray:
    """The example's audio, mono float32 at 16 kHz, whatever its label; or raises `Skipped`."""
    limits = limits or ExampleFilter()
    samples, rate = _read(raw)
    if samples.size == 0:
        raise Skipped("empty_audio", raw.id)
    if not np.all(np.isfinite(samples)):
        raise Skipped("non_finite_audio", raw.id)
    try:
        audio = prepare_audio(samples, rate, SAMPLE_RATE, source=raw.id)
    except FlaxDistilError as error:
        raise Skipped("unreadable_audio", raw.id, str(error)) from None
    seconds = len(audio) / SAMPLE_RATE
    if seconds < limits.min_seconds:
        raise Skipped("too_short", raw.id, f"{seconds:.2f} s")
    if seconds > limits.max_seconds:
        raise Skipped("too_long", raw.id, f"{seconds:.1f} s")
    if np.abs(audio).max() < limits.silence_peak:
        raise Skipped("silent_audio", raw.id)
    return audio


class SkipCounter(collections.Counter):
    """Skipped examples by reason, with the total examples seen, for metrics and the skip limit."""

    def __init__(self, max_skip_ratio: float = 0.5, min_seen: int = 100):
        super().__init__()
        self.seen = 0
        self.max_skip_ratio = max_skip_ratio
        self.min_seen = min_seen

    def record_decoded(self, skipped: Skipped | None) -> None:
        """Counts one decoded example (`skipped`: why it cannot be used), logging a skip:
        quietly for deliberate filtering, as a warning for broken input."""
        if skipped is not None:
            level = logging.DEBUG if skipped.reason in FILTER_REASONS else logging.WARNING
            log.log(level, "skipping %s", skipped)
        self.record(skipped)

    def record(self, skipped: Skipped | None, already_seen: bool = False) -> None:
        """Counts one example (unless `already_seen`: rejected after it was counted as good)."""
        self.seen += 0 if already_seen else 1
        if skipped is not None:
            self[skipped.reason] += 1
        # Filtered on purpose (the paper's WER filter drops ~45%) is not broken data.
        broken = sum(n for reason, n in self.items() if reason not in FILTER_REASONS)
        considered = self.seen - sum(self[reason] for reason in FILTER_REASONS)
        if considered >= self.min_seen and broken > self.max_skip_ratio * considered:
            raise FlaxDistilError(
                f"{broken} of {considered} examples were unusable ({dict(self)}); the data "
                f"looks mostly broken (raise data.max_skip_ratio={self.max_skip_ratio} if not)"
            )
