"""Mixing sources by weight into one epoch's order, with an explicit stopping strategy.

Each source's share of an epoch is fixed by the sources' sizes and weights (its quota), so an
epoch's length is known before any row is read:
- `first_exhausted`: the epoch ends when the first source runs out: the source with the fewest
  rows per unit of weight gives all its rows, the others rows in proportion to their weights;
- `all_exhausted`: sources that run out restart with a fresh permutation until every source has
  given all its rows once: the source with the most rows per unit of weight gives all its rows,
  the others as many as their weights ask for (more than they have: repeats).
The quotas' rows are interleaved in a seeded random order. A source's rows come in its own
seeded permutation per pass (`row_order(source, repeat)`), so an epoch depends only on the seed.

With `weight_by: hours` a source's mixing weight is `weight / mean row duration`, so that its
share of audio time (not of rows) follows `weight`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flax_distil.errors import FlaxDistilError

STOPPING_STRATEGIES = ("first_exhausted", "all_exhausted")


def check_strategy(strategy: str) -> str:
    if strategy not in STOPPING_STRATEGIES:
        raise FlaxDistilError(
            f"unknown stopping strategy {strategy!r}; use one of {', '.join(STOPPING_STRATEGIES)}"
        )
    return strategy


def quotas(sizes: list[int], weights: list[float], strategy: str) -> list[int]:
    """How many rows each source gives to an epoch; a source without rows gives none."""
    present = [index for index, size in enumerate(sizes) if size > 0]
    if not present:
        return [0] * len(sizes)
    ratios = [sizes[index] / weights[index] for index in present]
    pick = min if check_strategy(strategy) == "first_exhausted" else max
    scale = pick(ratios)
    takes = [0] * len(sizes)
    for index in present:
        wanted = weights[index] * scale
        if strategy == "first_exhausted":  # never more than the source has
            takes[index] = min(sizes[index], int(np.floor(wanted + 1e-9)))
        else:  # never less than the source has
            takes[index] = max(sizes[index], int(np.ceil(wanted - 1e-9)))
    return takes


def mixed_order(
    sizes: list[int],
    weights: list[float],
    strategy: str,
    rng: np.random.Generator,
    row_order: Callable[[int, int], np.ndarray],
) -> np.ndarray:
    """One epoch's (source, row) pairs [n, 2]: each source's quota of rows, taken from its
    passes `row_order(source, repeat)`, interleaved in an order drawn from `rng`."""
    takes = quotas(sizes, weights, strategy)
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), takes))
    order = np.empty((len(labels), 2), np.int64)
    order[:, 0] = labels
    for source, take in enumerate(takes):
        passes, total = [], 0
        while total < take:
            passes.append(np.asarray(row_order(source, len(passes)), np.int64))
            total += len(passes[-1])
        if take:
            order[labels == source, 1] = np.concatenate(passes)[:take]
    return order


def epoch_order(
    sizes: list[int],
    weights: list[float],
    seed: int,
    epoch: int,
    strategy: str = "first_exhausted",
) -> np.ndarray:
    """Global (source, row) pairs [n, 2] of one epoch over whole map-style sources."""

    def permutation(source: int, repeat: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch, source, repeat]).permutation(sizes[source])

    return mixed_order(sizes, weights, strategy, np.random.default_rng([seed, epoch]), permutation)


def mixing_weights(specs, mean_seconds: Callable[[int], float]) -> list[float]:
    """Each source's mixing weight: its `weight`, or with `weight_by: hours` its weight per
    second of audio in a mean row (`mean_seconds(index)`)."""
    weights = []
    for index, spec in enumerate(specs):
        if spec.weight_by == "rows":
            weights.append(spec.weight)
            continue
        seconds = mean_seconds(index)
        if not seconds > 0:
            raise FlaxDistilError(
                f"source {spec.path}: weight_by: hours found no audio duration (mean "
                f"{seconds} s); check its {spec.duration_column!r} column or audio files"
            )
        weights.append(spec.weight / seconds)
    return weights


def row_seconds(row: dict, spec) -> float:
    """A row's audio duration: its `duration_column`, else its audio file's header (0 for a
    missing file: it is skipped when decoded); rows holding audio bytes need the column."""
    if spec.duration_column in row:
        return float(row[spec.duration_column])
    audio = row.get(spec.audio_column)
    if not isinstance(audio, str):
        raise FlaxDistilError(
            f"source {spec.path}: weight_by: hours needs a {spec.duration_column!r} column "
            "(set duration_column) when the audio is stored as bytes"
        )
    import soundfile

    try:
        return soundfile.info(audio).duration
    except (OSError, RuntimeError):  # a missing or unreadable file is skipped when decoded
        return 0.0
