"""A deterministic, per-host sharded, exactly resumable stream of decoded examples.

Which raw example comes next (`_epoch_order`, `_raw`) is kept apart from decoding it
(`_decode`, the one place a `RawExample` is decoded). Sources mix by weight
(`flax_distil.data.mixing`): each source gives a quota of rows per epoch set by the stopping
strategy (`first_exhausted` or `all_exhausted`), interleaved in a seeded order. There are three
ways to shard an epoch over N hosts:

- `files` (every source local: parquet, audiofolder, jsonl): host h opens only its own files
  (`flax_distil.data.files`) and mixes its own rows in an order seeded by (seed, epoch, h). The
  hosts agree once, at setup, on the number of batches per epoch: the smallest host's share
  in whole batches (an allgather of per-host counts; a single process that simulates hosts
  counts each host's rows itself). Hosts' shares are disjoint and each row is read at most
  once per epoch (exactly once but for the tails cut to keep the hosts' batch counts equal).
- `global` (map-style sources that include a hub dataset): one global order, the same on every
  host, cut into blocks of `block_size` (the per-host batch size); host h reads blocks h,
  h + N, h + 2N, ...: N hosts' batches side by side are the batch one host would read with N
  times the batch size. The tail that does not fill a whole round of N blocks is left out.
- `streamed` (below).

The state is (epoch, position) in the host's share: restoring it jumps straight to the next
example, so nothing skipped is decoded again. Unusable examples are skipped, counted by reason
and logged.

Streaming sources (`SourceSpec(streaming=True)`) have no length, so an epoch's order is built
as it is read: each streaming source contributes its rows in its own seeded shuffled order
(datasets' shard shuffle and shuffle buffer, reseeded per epoch), map-style sources a seeded
permutation, interleaved by weighted draws until the first source runs out (`first_exhausted`
only: a stream's length is unknown). Blocks, hosts and the dropped partial round are as
above: a host reads ahead to the end of each round of blocks before serving its own block, so
it never starts a round the other hosts cannot finish. Every host reads every streamed row (to
agree on the order) but decodes only its own. Restoring replays the epoch's rows from its
start up to the saved position without decoding them, so a resume costs reading, not decoding.
"""

from __future__ import annotations

import numpy as np

from flax_distil.data.examples import (
    Example,
    ExampleFilter,
    SkipCounter,
    Skipped,
    decode_example,
)
from flax_distil.data.files import HostShard
from flax_distil.data.mixing import check_strategy, epoch_order, mixed_order, mixing_weights, quotas
from flax_distil.data.sources import LOCAL_KINDS, RawExample, Source
from flax_distil.errors import FlaxDistilError

_DRAWS = 1024  # weighted source draws made at a time for an order with streaming sources
__all__ = ["ExampleStream", "epoch_order"]


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
        stopping_strategy: str = "first_exhausted",
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
        self.read_only = False  # True: yields RawExamples undecoded (data.workers decodes)
        self.epoch, self.position = 0, 0
        self.stopping_strategy = check_strategy(stopping_strategy)
        self._order = None
        self._streamed = any(source.streaming for source in sources)
        self._reset_streamed()
        # `files` sharding: this host's `HostShard` of each source (`.opened`: files it opened)
        self.shards, self._host_examples = None, None
        if self._streamed:
            self.sharding = "streamed"
            if stopping_strategy != "first_exhausted":
                raise FlaxDistilError(
                    "streaming sources mix with stopping_strategy first_exhausted only (a "
                    "stream's length is unknown); set it, or streaming: false"
                )
        elif all(source.spec.kind in LOCAL_KINDS for source in sources):
            self.sharding = "files"
            self.shards = self._open_shards(process_index)
        else:
            self.sharding = "global"
        self._weights = self._mixing_weights(self.shards)
        if self.shards is not None:
            self._host_examples = self._agree_on_batches()

    def _reset_streamed(self) -> None:
        """Forgets the streamed order read so far (a new epoch, or a restore)."""
        self._items, self._taken = None, 0  # the epoch's order being read, items read from it
        self._block, self._block_round = [], -1  # this host's items in the current round

    def _open_shards(self, process_index: int) -> list[HostShard]:
        """Host `process_index`'s shard of every source (opening only that host's files)."""
        return [HostShard(source, process_index, self.process_count) for source in self.sources]

    def _mixing_weights(self, shards: list[HostShard] | None) -> list[float]:
        """The sources' mixing weights; `weight_by: hours` measures these shards (a host's), or
        without shards the whole sources."""
        specs = [source.spec for source in self.sources]
        if shards is None:
            return mixing_weights(specs, lambda i: self.sources[i].mean_seconds())
        return mixing_weights(specs, lambda i: shards[i].mean_seconds() if len(shards[i]) else 1.0)

    def _host_length(self, shards: list[HostShard], weights: list[float]) -> int:
        """How many examples an epoch of these shards holds (the same every epoch)."""
        sizes = [len(shard) for shard in shards]
        return sum(quotas(sizes, weights, self.stopping_strategy))

    def _length_of_host(self, host: int) -> int:
        """Another host's examples per epoch, counted by opening its files (simulated hosts)."""
        shards = self._open_shards(host)
        return self._host_length(shards, self._mixing_weights(shards))

    def _agree_on_batches(self) -> int:
        """This host's examples per epoch: every host's share cut to the smallest one's whole
        batches, so all hosts cross into the next epoch at the same step. Hosts allgather their
        counts once (`jax.distributed`); a process simulating hosts counts each one itself."""
        import jax

        local = self._host_length(self.shards, self._weights)
        if self.process_count == 1:
            lengths = [local]
        elif jax.process_count() == self.process_count:
            from flax_distil import parallel

            lengths = parallel.allgather(np.asarray([local], np.int64)).reshape(-1).tolist()
        else:
            lengths = [
                local if host == self.process_index else self._length_of_host(host)
                for host in range(self.process_count)
            ]
        batches = min(lengths) // self.block_size
        if batches == 0:
            host = int(np.argmin(lengths))
            raise FlaxDistilError(
                f"host {host}'s share of an epoch has {min(lengths)} examples, fewer than one "
                f"batch of {self.block_size}: use more data or files, or a smaller batch"
            )
        return batches * self.block_size

    def _epoch_order(self) -> np.ndarray:
        """This host's (source, row) pairs of the epoch, in order; the same number of whole
        batches on every host."""
        if self._order is None:
            self._order = self._global_share() if self.shards is None else self._host_order()
        return self._order

    def _host_order(self) -> np.ndarray:
        """`files` sharding: this host's rows mixed in an order seeded by (seed, epoch, host)."""
        key = [self.seed, self.epoch, self.process_index]

        def rows(source: int, repeat: int) -> np.ndarray:
            return self.shards[source].row_order(np.random.default_rng([*key, source, repeat]))

        sizes = [len(shard) for shard in self.shards]
        rng = np.random.default_rng(key)
        order = mixed_order(sizes, self._weights, self.stopping_strategy, rng, rows)
        return order[: self._host_examples]

    def _global_share(self) -> np.ndarray:
        """`global` sharding: this host's blocks of the epoch's global order, cut to whole
        rounds of blocks (one block per host)."""
        sizes = [len(source) for source in self.sources]
        order = epoch_order(sizes, self._weights, self.seed, self.epoch, self.stopping_strategy)
        round_size = self.block_size * self.process_count
        if len(order) < round_size:
            raise FlaxDistilError(
                f"an epoch has {len(order)} examples, fewer than one global batch of "
                f"{round_size}: use more data or a smaller batch"
            )
        rounds = order[: len(order) - len(order) % round_size]
        blocks = rounds.reshape(-1, self.process_count, self.block_size, 2)
        return blocks[:, self.process_index].reshape(-1, 2)

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
        while self.position < len(order):
            source, row = order[self.position]
            self.position += 1
            example = self._decode(self._raw(source, row))
            if example is not None:
                return example
        return None

    def _raw(self, source: int, row: int) -> RawExample:
        """Row `row` of source `source` as the epoch order names it (host-local for `files`)."""
        if self.shards is not None:
            return self.shards[source].raw(int(row))
        return self.sources[source][row]

    def _decode(self, raw: RawExample) -> Example | None:
        if self.read_only:  # worker processes decode it (data.workers.WorkerStream)
            return raw
        self.decoded += 1
        try:
            example = decode_example(raw, self.limits)
        except Skipped as skipped:
            self.skipped.record_decoded(skipped)
            return None
        self.skipped.record_decoded(None)
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
        weights = np.asarray(self._weights, np.float64)
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

    def state(self) -> dict:
        """A small JSON-able state; `restore` continues with exactly the next example."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "process_index": self.process_index,
            "process_count": self.process_count,
            "block_size": self.block_size,
            "sharding": self.sharding,
            "stopping_strategy": self.stopping_strategy,
            "seen": self.skipped.seen,
            "skipped": dict(self.skipped),
        }

    def restore(self, state: dict) -> None:
        keys = ("seed", "process_index", "process_count", "block_size", "sharding")
        keys += ("stopping_strategy",)
        # States from before per-host files and quotas were all but streamed ones "streamed"-
        # compatible only: the others' orders changed, so they are refused, not resumed wrongly.
        defaults = {"sharding": "streamed", "stopping_strategy": "first_exhausted"}
        layout = tuple(getattr(self, key) for key in keys)
        saved = tuple(state.get(key, defaults.get(key)) for key in keys)
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
