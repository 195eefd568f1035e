"""Evaluation sets: a source's usable rows decoded into memory, and the rows skipped, with why.

`evaluate`, `compare` and evaluation during training read their data through `load_eval_set`,
from a map-style or a streaming source (read once, in order, nothing downloaded first): every row
is decoded once (about 230 MB per hour of audio) and reused for every model, noise
level and eval step; a row that cannot be used is listed with its reason instead of stopping
the run.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
from tqdm import tqdm

from flax_distil.audio import SAMPLE_RATE
from flax_distil.data.examples import ExampleFilter, Skipped, decode_example
from flax_distil.data.sources import Source, SourceSpec
from flax_distil.errors import FlaxDistilError

# Evaluation keeps clips of any length (long ones go through long-form decoding).
_KEEP_ALL_LENGTHS = ExampleFilter(max_seconds=math.inf)


@dataclasses.dataclass
class EvalSet:
    """The usable rows of a dataset, decoded, and the rows that were skipped (with why)."""

    name: str
    ids: list[str]
    audio: list[np.ndarray]  # mono float32, 16 kHz
    references: list[str]
    files: list[str | None]
    skipped: list[dict]  # {"id", "file", "reason", "error"}

    def __len__(self) -> int:
        return len(self.audio)

    @property
    def audio_seconds(self) -> float:
        return sum(len(clip) for clip in self.audio) / SAMPLE_RATE

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.skipped:
            counts[row["reason"]] = counts.get(row["reason"], 0) + 1
        return counts


def load_eval_set(
    spec: SourceSpec, max_samples: int | None = None, limits: ExampleFilter | None = None
) -> EvalSet:
    """Decodes a source's first `max_samples` rows (all by default); unusable ones are listed,
    not fatal (unless none is usable). `limits` defaults to clips of any length."""
    source = Source(spec)
    data = EvalSet(spec.name or spec.path, [], [], [], [], [])
    limits = limits or _KEEP_ALL_LENGTHS
    count = 0
    rows = _raw_examples(source, max_samples)
    total = None if source.streaming else min(len(source), max_samples or len(source))
    for raw in tqdm(rows, total=total, desc=f"reading {spec.path}", unit="row", leave=False):
        count += 1
        try:
            example = decode_example(raw, limits)
        except Skipped as skipped:
            data.skipped.append(
                {
                    "id": raw.id,
                    "file": raw.audio_path,
                    "reason": skipped.reason,
                    "error": str(skipped),
                }
            )
            continue
        data.ids.append(example.id)
        data.audio.append(example.audio)
        data.references.append(example.text)
        data.files.append(raw.audio_path)
    if not data.audio:
        raise FlaxDistilError(
            f"{spec.path}: none of its {count} rows is usable ({data.skipped_by_reason()})"
        )
    return data


def _raw_examples(source: Source, max_samples: int | None):
    """The source's first `max_samples` rows (all by default), in its order. A streaming source
    is read file by file, unshuffled, so a row has the id it has read map-style (`path#index`)."""
    if not source.streaming:
        count = len(source) if max_samples is None else min(len(source), max_samples)
        yield from (source[index] for index in range(count))
        return
    for index, row in enumerate(itertools.islice(source.table, max_samples)):
        yield source.raw_example(row, source.example_id(index))
