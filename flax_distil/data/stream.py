"""A deterministic, per-host sharded, exactly resumable stream of decoded examples.

Each epoch has one global order, the same on every host: a seeded permutation of each source,
interleaved by the sources' weights until the first one runs out. The order is cut into blocks
of `block_size` (the per-host batch size); host h of N reads blocks h, h + N, h + 2N, ...: hosts
read disjoint shares whose union is the epoch, and N hosts' batches side by side are the batch
one host would read with N times the batch size. The epoch's tail that does not fill a whole
round of N blocks is left out, so all hosts cross into the next epoch at the same batch. The state
is (epoch, position): restoring it jumps straight to the next example, so nothing skipped is
decoded again. Unusable examples are skipped, counted by reason and logged.

Streaming sources (`SourceSpec(streaming=True)`) have no length, so an epoch's order is built
as it is read: each streaming source contributes its rows in its own seeded shuffled order
(datasets' shard shuffle and shuffle buffer, reseeded per epoch), map-style sources a seeded
permutation, interleaved by weighted draws until the first source runs out (the same rule as
`epoch_order`, though not the same draws). Blocks, hosts and the dropped partial round are as
above: a host reads ahead to the end of each round of blocks before serving its own block, so
it never starts a round the other hosts cannot finish. Every host reads every streamed row (to
agree on the order) but decodes only its own. Restoring replays the epoch's rows from its
start up to the saved position without decoding them, so a resume costs reading, not decoding.
"""

from __future__ import annotations

import logging

import numpy as np

from flax_distil.data.examples import (
    FILTER_REASONS,
    Example,
    ExampleFilter,
    SkipCounter,
    Skipped,
    decode_example,
)
from flax_distil.data.sources import RawExample, Source
from flax_distil.errors import FlaxDistilError

log = logging.getLogger(__name__)
_DRAWS = 1024  # weighted source draws made at a time for an order with streaming sources


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
        self._streamed = any(source.streaming for source in sources)
        self._reset_streamed()

    def _reset_streamed(self) -> None:
        """Forgets the streamed order read so far (a new epoch, or a restore)."""
        self._items, self._taken = None, 0  # the epoch's order being read, items read from it
        self._block, self._block_round = [], -1  # this host's items in the current round

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
        self._reset_streamed()

    def _next_in_epoch(self) -> Example | None:
        if self._streamed:
            return self._next_streamed()
        order = self._epoch_order()
        while (index := self._global_index(self.position)) < len(order):
            self.position += 1
            source, row = order[index]
            example = self._decode(self.sources[source][row])
            if example is not None:
                return example
        return None

    def _decode(self, raw: RawExample) -> Example | None:
        self.decoded += 1
        try:
            example = decode_example(raw, self.limits)
        except Skipped as skipped:
            level = logging.DEBUG if skipped.reason in FILTER_REASONS else logging.WARNING
            log.log(level, "skipping %s", skipped)
            self.skipped.record(skipped)
            return None
        self.skipped.record(None)
        return example

    def _next_streamed(self) -> Example | None:
        while True:
            block, offset = divmod(self.position, self.block_size)  # this host's block = round
            if block != self._block_round and not self._read_round(block):
                return None
            self.position += 1
            source, item = self._block[offset]
            if self.sources[source].streaming:
                number, row = item
                raw = self.sources[source].streamed_example(row, self.epoch, number)
            else:
                raw = self.sources[source][item]
            example = self._decode(raw)
            if example is not None:
                return example

    def _read_round(self, round_index: int) -> bool:
        """Reads the streamed order to the end of round `round_index`, keeping this host's block;
        False when the epoch ends first (its partial last round is left out on every host)."""
        if self._items is None or self._taken > round_index * self.block_size * self.process_count:
            self._reset_streamed()
            self._items = self._streamed_order()
        round_size = self.block_size * self.process_count
        own = round_index * round_size + self.process_index * self.block_size
        block = []
        while self._taken < (round_index + 1) * round_size:
            item = next(self._items, None)
            if item is None:
                if round_index == 0:
                    raise FlaxDistilError(
                        f"an epoch has {self._taken} examples, fewer than one global batch of "
                        f"{round_size}: use more data or a smaller batch"
                    )
                return False
            if own <= self._taken < own + self.block_size:
                block.append(item)
            self._taken += 1
        self._block, self._block_round = block, round_index
        return True

    def _streamed_order(self):
        """This epoch's global order when a source streams: (source, row index) for map-style
        sources, (source, (number, row dict)) for streaming ones; the same on every host."""
        rng = np.random.default_rng([self.seed, self.epoch])
        rows = []
        for index, source in enumerate(self.sources):
            if source.streaming:
                seed = int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
                rows.append(source.stream_rows(seed, self.epoch))
            else:
                rows.append(iter(rng.permutation(len(source))))
        weights = np.asarray([source.spec.weight for source in self.sources], np.float64)
        taken = [0] * len(self.sources)
        while True:
            if len(self.sources) == 1:
                draws = np.zeros(_DRAWS, np.int64)
            else:
                draws = rng.choice(len(self.sources), size=_DRAWS, p=weights / weights.sum())
            for source in draws:
                row = next(rows[source], None)
                if row is None:
                    return
                yield source, ((taken[source], row) if self.sources[source].streaming else row)
                taken[source] += 1

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
        self._reset_streamed()
        self.skipped.clear()
        self.skipped.update(state["skipped"])
        self.skipped.seen = state["seen"]
