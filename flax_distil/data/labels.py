"""Decoder prompts and labels for training examples: the Distil-Whisper v3 recipe's choices.

- Labels are the pseudo-labels' token ids when the example has them (timestamp tokens included
  when it was labelled with `--timestamps`), otherwise its text, tokenised.
- Timestamps: an example whose labels have timestamps keeps them with probability
  `timestamp_probability` (the prompt then has no <|notimestamps|>); otherwise they are
  stripped and the prompt ends with <|notimestamps|>. Examples without timestamps always take
  the latter.
- Previous text: with probability `condition_on_prev_probability`, an example with a previous
  window (the window before it in the same recording or speaker: `flax-distil pack` writes its
  text, `pseudo-label` the labels of the whole recording before it) gets the prompt
  <|startofprev|> + those tokens (the labels, timestamps kept when this label keeps its own,
  as sequential decoding prompts with its own output so far; else the text tokenised), cut
  from the left to at most half of `max_label_length` and to what the label leaves free (the
  prompt yields to the label: a label that fits alone is never dropped for its prompt), then
  to a length drawn uniformly from 1 to what is left (sequential decoding's prompts have every
  length up to the cap), before the start tokens.
  The whole prompt is masked from the loss; teacher and student read the same prompt.
- The start tokens carry the example's language and task (multilingual models).

Each choice is drawn from a generator seeded by (seed, epoch, example id): a resumed run draws
what the uninterrupted run drew, and every epoch draws anew.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from flax_distil.data.examples import Example
from flax_distil.errors import FlaxDistilError
from flax_distil.tokenizer import SpecialTokens, decoder_prompt


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    max_label_length: int = 128  # decoder positions: prompt + label + end-of-text, less one
    long_labels: str = "drop"  # or "truncate"
    timestamp_probability: float = 0.5
    condition_on_prev_probability: float = 0.0
    language: str | None = "en"  # multilingual models, unless the example's source names one
    seed: int = 0

    def __post_init__(self):
        if self.long_labels not in ("drop", "truncate"):
            raise FlaxDistilError("long_labels must be 'drop' or 'truncate'")
        for name in ("timestamp_probability", "condition_on_prev_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FlaxDistilError(f"data.{name} must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Labelled:
    prompt: list[int]  # forced tokens, masked from the loss
    tokens: list[int]  # the label, without end-of-text (cut to fit when truncated)


class Labeller:
    """Turns an example into (prompt, label tokens) as `LabelSpec` says."""

    def __init__(self, tokenizer, multilingual: bool, spec: LabelSpec):
        self.tokenizer, self.multilingual, self.spec = tokenizer, multilingual, spec
        self.special = SpecialTokens.of(tokenizer)
        self.eos = self.special.end_of_text
        self._prompts: dict[tuple, list[int]] = {}  # `SpecialTokens.of` costs ~2 ms a call
        shortest = len(self.start_tokens(None, "transcribe", timestamps=False)) + 1
        if shortest > spec.max_label_length:
            raise FlaxDistilError("max_label_length leaves no room after the decoder prompt")

    def start_tokens(self, language, task, timestamps: bool) -> list[int]:
        key = (language, task, timestamps)
        if key not in self._prompts:
            self._prompts[key] = decoder_prompt(
                self.tokenizer,
                multilingual=self.multilingual,
                language=(language or self.spec.language) if self.multilingual else None,
                task=task,
                timestamps=timestamps,
            )
        return list(self._prompts[key])

    def label(self, example: Example, epoch: int) -> Labelled | None:
        """The example's prompt and label; None when the label does not fit and is dropped."""
        key = zlib.crc32(example.id.encode())
        draws = np.random.default_rng([self.spec.seed, epoch, key]).random(3)
        keep_timestamps, condition, prompt_share = draws
        tokens = example.token_ids
        if tokens is None:
            tokens = self.tokenizer(" " + example.text, add_special_tokens=False).input_ids
        has_timestamps = any(t >= self.special.timestamp_begin for t in tokens)
        timestamps = has_timestamps and keep_timestamps < self.spec.timestamp_probability
        if not timestamps:
            tokens = [t for t in tokens if t < self.special.timestamp_begin]
        prompt = self.start_tokens(example.language, example.task, timestamps)
        free = self.spec.max_label_length - len(prompt) - len(tokens) - 1  # <|startofprev|>
        keep = min(self.spec.max_label_length // 2 - 1, free)
        if example.previous and condition < self.spec.condition_on_prev_probability and keep > 0:
            before = self._previous_tokens(example.previous, timestamps)[-keep:]
            # Sequential decoding's prompt grows from one window's text to the cap over a
            # recording's first windows: any length up to what is there (a student that only
            # saw full-length prompts closed a window after one sentence under a shorter one).
            length = 1 + int(prompt_share * len(before))  # 1 to len(before)
            prompt = [self.special.start_of_prev, *before[-length:], *prompt]
        room = self.spec.max_label_length - len(prompt)  # label + end-of-text, less one
        if len(tokens) <= room:
            return Labelled(prompt, list(tokens))
        if self.spec.long_labels == "truncate":  # fills the labels; no end-of-text fits
            return Labelled(prompt, list(tokens[: room + 1]))
        return None

    def _previous_tokens(self, previous: list[int] | str, timestamps: bool) -> list[int]:
        """The previous window's tokens as sequential decoding would prompt with them: its
        labels' timestamps kept when this label keeps its own, stripped otherwise."""
        if isinstance(previous, str):
            return self.tokenizer(" " + previous.strip(), add_special_tokens=False).input_ids
        if timestamps:
            return list(previous)
        return [t for t in previous if t < self.special.timestamp_begin]


def label_arrays(prompt: list[int], text_tokens: list[int], eos: int, length: int):
    """(decoder_input_ids, labels, loss_mask), each [length], for one example; the inputs are
    real up to the loss mask's last 1, and the prompt carries no loss."""
    tokens = [*prompt, *text_tokens, eos][: length + 1]
    inputs = np.full(length, eos, np.int32)
    labels = np.full(length, eos, np.int32)
    mask = np.zeros(length, np.float32)
    inputs[: len(tokens) - 1] = tokens[:-1]
    labels[: len(tokens) - 1] = tokens[1:]
    mask[len(prompt) - 1 : len(tokens) - 1] = 1.0
    return inputs, labels, mask
