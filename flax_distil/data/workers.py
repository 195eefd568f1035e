"""Decoding examples in worker processes, in order, ahead of the training loop.

    stream = decoding_in_workers(ExampleStream(sources, ...), num_workers=4)

Reading, decoding and resampling audio is the host pipeline's costly part (a 12 s FLAC clip or a
48 kHz MP3 costs several times a 3 s 16 kHz clip), and one Python thread does it one example at
a time. `WorkerStream` keeps the stream's order and its exact resume and moves the decoding into
`num_workers` processes: the wrapped stream, put in `read_only` mode, yields raw examples in its
usual order together with its state after each one; each raw example is sent to a worker
(`decode_example` is pure), at most `ahead` of them in flight; results are taken in the order
they were sent. Only then does the wrapper count the example (skips by reason, in order, in the
parent's `SkipCounter`) and take its stream state, so `state()` covers the examples consumed,
never those decoded ahead, and the examples are identical to in-process decoding.

The workers come from the forkserver context (spawn where there is none): the parent runs JAX's
threads, and forking a threaded process can deadlock the child.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing

from flax_distil.audio import float_to_pcm16
from flax_distil.data.examples import (
    Example,
    ExampleFilter,
    SkipCounter,
    Skipped,
    decode_example,
)
from flax_distil.data.stream import ExampleStream
from flax_distil.errors import FlaxDistilError

AHEAD_PER_WORKER = 4  # examples in flight per worker: enough to hide one slow file


def decoding_in_workers(stream: ExampleStream, num_workers: int):
    """`stream` itself for 0 workers (decoding in the caller's thread), else a `WorkerStream`."""
    if num_workers < 0:
        raise FlaxDistilError(f"data.num_workers must be >= 0, not {num_workers}")
    return WorkerStream(stream, num_workers) if num_workers else stream


def _decode_or_skip(raw, limits: ExampleFilter) -> Example | Skipped:
    """In a worker: the example with its audio as int16 PCM (what the batch holds: half the
    bytes to send back, and the conversion off the parent), or the reason it is skipped
    (returned, not raised)."""
    try:
        example = decode_example(raw, limits)
    except Skipped as skipped:
        return skipped
    return dataclasses.replace(example, audio=float_to_pcm16(example.audio))


def _context():
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if context.get_start_method() == "forkserver":
        # Imported once in the server, not in every worker (the audio stack imports JAX).
        context.set_forkserver_preload(["flax_distil.data.examples"])
    return context


class WorkerStream:
    """An `ExampleStream` whose examples are decoded by worker processes; the same examples,
    state and resume as the stream itself."""

    def __init__(self, stream: ExampleStream, num_workers: int, ahead: int | None = None):
        self.reader = stream
        self.reader.read_only = True  # yields RawExamples; decoding happens here
        self.limits = stream.limits
        self.skipped = SkipCounter(stream.skipped.max_skip_ratio, stream.skipped.min_seen)
        self.skipped.update(stream.skipped)
        self.skipped.seen = stream.skipped.seen
        self.num_workers = num_workers
        self.ahead = ahead or AHEAD_PER_WORKER * num_workers
        self.decoded = 0  # examples sent to a worker (those decoded ahead included)
        self._consumed = stream.state()  # the reader's state after the last consumed example
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._pending: collections.deque = collections.deque()  # (future, reader state)
        self._read_error: Exception | None = None

    @property
    def epoch(self) -> int:
        """The epoch of the last consumed example (the reader may be ahead)."""
        return self._consumed["epoch"]

    @property
    def position(self) -> int:
        return self._consumed["position"]

    def __iter__(self):
        return self

    def __next__(self) -> Example:
        start_epoch = self.epoch
        while True:
            result, state = self._take()
            if state["epoch"] > start_epoch + 1:  # as ExampleStream: a whole epoch was unusable
                raise FlaxDistilError("no usable example in a whole epoch of this host's data")
            self._consumed = state
            if isinstance(result, Example):
                self.skipped.record_decoded(None)
                return result
            self.skipped.record_decoded(result)

    def _take(self) -> tuple[Example | Skipped, dict]:
        """The next result in the stream's order, with the reader's state after it."""
        self._fill()
        if not self._pending:
            raise self._read_error
        future, state = self._pending.popleft()
        return future.result(), state

    def _fill(self) -> None:
        """Sends raw examples to the workers until `ahead` are in flight. An error of the
        reader is kept and raised once the examples read before it are consumed."""
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.num_workers, mp_context=_context()
            )
        while len(self._pending) < self.ahead and self._read_error is None:
            try:
                raw = next(self.reader)
            except Exception as error:  # raised in order, after what was read before it
                self._read_error = error
                return
            future = self._pool.submit(_decode_or_skip, raw, self.limits)
            self._pending.append((future, self.reader.state()))
            self.decoded += 1

    def state(self) -> dict:
        """The stream's state after the last consumed example (as `ExampleStream.state`)."""
        return {**self._consumed, "seen": self.skipped.seen, "skipped": dict(self.skipped)}

    def restore(self, state: dict) -> None:
        """Continues after `state`'s last example; examples decoded ahead are dropped."""
        for future, _ in self._pending:
            future.cancel()
        self._pending.clear()
        self._read_error = None
        self.reader.restore(state)
        self._consumed = self.reader.state()
        self.skipped.clear()
        self.skipped.update(state["skipped"])
        self.skipped.seen = state["seen"]

    def close(self) -> None:
        """Stops the workers (they also stop when the process exits)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
