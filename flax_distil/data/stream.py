"""A deterministic, per-host sharded, exactly resumable stream of decoded examples.

Each epoch has one global order, the same on every host: a seeded permutation of each source,
interleaved by the sources' weights until the first one runs out. The order is cut into blocks
of `block_size` (the per-host batch size); host h of N reads blocks h, h + N, h + 2N, ...: hosts
read disjoint shares whose union is the epoch, and N hosts' batches side by side are the batch
one host would read with N times the batch size. The epoch's tail that does not fill a whole
round of N blocks is left out, so all hosts cross into the next epoch at the same batch. The state
is (epoch, position): restoring it jumps straight to the next example, so nothing skipped is
decoded again. Unusable examples are skipped, counted by reason and logged.
"""

from __future__ import annotations

import logging

import numpy as np

from flax_distil.data.examples import (
    Example,
    ExampleFilter,
    SkipCounter,
    Skipped,
    decode_example,
)
from flax_distil.data.sources import Source
from flax_distil.errors import FlaxDistilError

log = logging.getLogger(__name__)


def epoch_order(sizes: list[int], weights: list[float], seed: int, epoch: int) -> np.ndarray:
    """Global (source, row) pairs [n, 2] of one epoch, weighted, stopping at the first exhausted."""
    rng = np.random.default_rng([seed, epoch])
    permutations = [rng.permutation(size) for size in sizes]
    if len(sizes) == 1:
        return np.stack([np.zeros(sizes[0], np.int64), permutations[0]], axis=1)
    probabilities = np.asarray(weights, np.float64) / np.sum(weights)
    draws = rng.choice(len(sizes), size=sum(sizes), p=probabilities)
    taken = np.zeros(len(sizes), np.int64)
    order = []
    for source in draws:
        if taken[source] == sizes[source]:
            break
        order.append((source, permutations[source][taken[source]]))
        taken[source] += 1
    return np.asarray(order, np.int64).reshape(-1, 2)


class ExampleStream:
    """Decoded examples for one host, forever (epoch after epoch), resumable from `state()`."""

    def __init__(
        self,
        sources: list[Source],
        *,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        block_size: int = 1,
        limits: ExampleFilter | None = None,
        max_skip_ratio: float = 0.5,
    ):
        if not sources:
            raise FlaxDistilError("no data sources given")
        if not 0 <= process_index < process_count:
            raise FlaxDistilError(f"process index {process_index} not in 0..{process_count - 1}")
        self.sources = sources
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.block_size = block_size
        self.limits = limits or ExampleFilter()
        self.skipped = SkipCounter(max_skip_ratio)
        self.decoded = 0  # examples decoded by this stream (resume must not redo any)
        self.epoch, self.position = 0, 0
        self._order = None

    def _epoch_order(self) -> np.ndarray:
        """This epoch's global order, cut to whole rounds of blocks (one block per host), so
        that every host starts the next epoch at the same global batch."""
        if self._order is None:
            sizes = [len(source) for source in self.sources]
            weights = [source.spec.weight for source in self.sources]
            order = epoch_order(sizes, weights, self.seed, self.epoch)
            round_size = self.block_size * self.process_count
            if len(order) < round_size:
                raise FlaxDistilError(
                    f"an epoch has {len(order)} examples, fewer than one global batch of "
                    f"{round_size}: use more data or a smaller batch"
                )
            self._order = order[: len(order) - len(order) % round_size]
        return self._order

    def __iter__(self):
        return self

    def __next__(self) -> Example:
        example = self._next_in_epoch()
        if example is None:
            if self.position == 0:
                raise FlaxDistilError("the data sources give this host no examples")
            self._start_next_epoch()
            example = self._next_in_epoch()
        if example is None:
            raise FlaxDistilError("no usable example in a whole epoch of this host's data")
        return example

    def one_epoch(self):
        """The rest of the current epoch's usable examples (all of it from a fresh stream)."""
        while (example := self._next_in_epoch()) is not None:
            yield example
        self._start_next_epoch()

    def _start_next_epoch(self) -> None:
        self.epoch, self.position, self._order = self.epoch + 1, 0, None

    def _next_in_epoch(self) -> Example | None:
        order = self._epoch_order()
        while (index := self._global_index(self.position)) < len(order):
            self.position += 1
            source, row = order[index]
            raw = self.sources[source][row]
            self.decoded += 1
            try:
                example = decode_example(raw, self.limits)
            except Skipped as skipped:
                log.warning("skipping %s", skipped)
                self.skipped.record(skipped)
                continue
            self.skipped.record(None)
            return example
        return None

    def _global_index(self, position: int) -> int:
        block, offset = divmod(position, self.block_size)
        return (block * self.process_count + self.process_index) * self.block_size + offset

    def state(self) -> dict:
        """A small JSON-able state; `restore` continues with exactly the next example."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "process_index": self.process_index,
            "process_count": self.process_count,
            "block_size": self.block_size,
            "seen": self.skipped.seen,
            "skipped": dict(self.skipped),
        }

    def restore(self, state: dict) -> None:
        keys = ("seed", "process_index", "process_count", "block_size")
        layout = tuple(getattr(self, key) for key in keys)
        saved = tuple(state[key] for key in keys)
        if saved != layout:
            raise FlaxDistilError(
                f"data state was saved for {dict(zip(keys, saved, strict=True))}, not "
                f"{dict(zip(keys, layout, strict=True))}"
            )
        self.epoch, self.position, self._order = state["epoch"], state["position"], None
        self.skipped.clear()
        self.skipped.update(state["skipped"])
        self.skipped.seen = state["seen"]
