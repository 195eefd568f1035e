"""Batch and prompt shapes: every batch and prompt is padded to one of a few sizes, so a handful
of compiled programs serve every call.

- Rows: a batch of n clips becomes the smallest power of two >= n, rounded up to a multiple of
  the devices it is split over; padding rows repeat the last clip (they stop when it does).
- Prompts: prompts of different lengths (previous-text prompts) are left-padded to a few widths;
  the decoder masks the padding (`Whisper.decode_step(first=...)`), so each row decodes exactly
  as its unpadded prompt would.
"""

from __future__ import annotations

import numpy as np


def bucket_rows(batch: int, devices: int = 1) -> int:
    """Rows a batch of `batch` is padded to: the next power of two, a multiple of `devices`."""
    rows = 1 << max(batch - 1, 0).bit_length()
    return -(-rows // devices) * devices


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` [n, ...] with its last row repeated up to `rows` rows."""
    array = np.asarray(array)
    if array.shape[0] == rows:
        return array
    return np.concatenate([array, np.repeat(array[-1:], rows - array.shape[0], axis=0)])


def prompt_width(length: int, max_target_positions: int) -> int:
    """Slots a prompt of `length` tokens is left-padded to: powers of two from 8, then half the
    decoder's positions plus 4 (OpenAI's longest prompt: 223 previous tokens, <|startofprev|>
    and 3 start tokens). The plain start sequences (at most 4 tokens) and longer prompts stay as
    they are."""
    if length <= 4:
        return length
    widths = [8, 16, 32, 64, 128, max_target_positions // 2 + 4]
    return next((w for w in widths if w >= length), length)


def pad_prompts(prompts: list[list[int]], max_target_positions: int):
    """Left-pads token lists to one width: (prompts [B, P], first real slot per row [B], or None
    when no row needed padding)."""
    width = prompt_width(max(len(p) for p in prompts), max_target_positions)
    starts = np.asarray([width - len(p) for p in prompts], np.int32)
    padded = np.zeros((len(prompts), width), np.int32)
    for row, prompt in zip(padded, prompts, strict=True):
        row[width - len(prompt) :] = prompt
    return padded, (starts if starts.any() else None)
