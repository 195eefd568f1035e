"""Fixed-shape training batches from an example stream, prefetched in a background thread.

A batch holds, for each of `batch_size` examples:
- `audio` [B, 480000]: the clip zero-padded to 30 s as int16 PCM (half the bytes of float32 to
  copy to the devices), for the JAX log-mel on the accelerator (`features_on="device"`), or
  `features` [B, mels, 3000] computed on the host CPU from the same int16 audio (either way the
  step sees the same features);
- `decoder_input_ids` and `labels` [B, max_label_length]: each example's decoder prompt, its
  label tokens and end-of-text (`labels.Labeller`: token ids or text, timestamps, previous-text
  prompts), shifted by one, padded with end-of-text;
- `loss_mask` [B, max_label_length]: 1 where the label is a text token or end-of-text, 0 on
  the prompt and the padding.

Labels longer than `max_label_length` are dropped (counted as `label_too_long`) or truncated.

With `label_bucket` > 0 the label arrays are only as long as the batch's longest label, rounded
up to a multiple of `label_bucket` (each distinct length compiles the step once): a short batch
then costs a short step. `length_groups` > 1 makes such batches likely: that many batches'
worth of examples is read at once, sorted by label length, cut into batches and handed out in
a seeded random order, so similar lengths share a batch.

The state a batch carries is the stream's state where its group began plus how many batches
of that group were handed out, so restoring it continues with exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import queue
import threading

import numpy as np

from flax_distil.audio import N_SAMPLES, batch_pcm16
from flax_distil.data.examples import Example, Skipped
from flax_distil.data.labels import Labelled, Labeller, label_arrays
from flax_distil.data.stream import ExampleStream
from flax_distil.errors import FlaxDistilError


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    batch_size: int
    features_on: str = "device"  # or "host"
    num_mel_bins: int = 80
    label_bucket: int = 0  # 0: always max_label_length; k: the batch's longest, rounded up to k
    length_groups: int = 1  # batches read together and sorted by label length

    def __post_init__(self):
        if self.batch_size < 1:
            raise FlaxDistilError("batch_size must be at least 1")
        if self.label_bucket < 0 or self.length_groups < 1:
            raise FlaxDistilError("label_bucket must be >= 0 and length_groups >= 1")
        if self.features_on not in ("device", "host"):
            raise FlaxDistilError("features_on must be 'device' or 'host'")


class Batches:
    """Iterator of host-local batches (dicts of numpy arrays) with `state()` / `restore()`."""

    def __init__(self, stream: ExampleStream, labeller: Labeller, spec: BatchSpec, prefetch=2):
        self.stream, self.labeller, self.spec = stream, labeller, spec
        self.eos = labeller.eos
        self.max_label_length = labeller.spec.max_label_length
        self.prefetch = prefetch
        self._state = {"stream": stream.state(), "batches_taken": 0}
        self._groups = self._build_groups()
        self._queue: queue.Queue | None = None

    def _label(self, example: Example) -> Labelled | None:
        labelled = self.labeller.label(example, self.stream.epoch)
        if labelled is None:
            self.stream.skipped.record(Skipped("label_too_long", example.id), already_seen=True)
        return labelled

    def _read_group(self) -> list[list[tuple[Example, Labelled]]]:
        """The next `length_groups` batches' examples (with their labels), in the order they
        are handed out."""
        start = self.stream.state()
        pairs = []
        while len(pairs) < self.spec.batch_size * self.spec.length_groups:
            example = next(self.stream)
            labelled = self._label(example)
            if labelled is not None:
                pairs.append((example, labelled))
        if self.spec.length_groups == 1:
            return [pairs]
        # stable: ties keep the stream's order
        pairs.sort(key=lambda pair: len(pair[1].prompt) + len(pair[1].tokens))
        size = self.spec.batch_size
        batches = [pairs[i : i + size] for i in range(0, len(pairs), size)]
        rng = np.random.default_rng([start["seed"], start["epoch"], start["position"]])
        return [batches[i] for i in rng.permutation(len(batches))]

    def _label_length(self, labels: list[Labelled]) -> int:
        # prompt + text + end-of-text, less one: inputs and labels are the tokens shifted by one
        longest = max(len(label.prompt) + len(label.tokens) for label in labels)
        bucket = self.spec.label_bucket
        if not bucket:
            return self.max_label_length
        return min(self.max_label_length, -(-longest // bucket) * bucket)

    def _build_groups(self, taken: int = 0):
        """Yields (batch, state) forever from the stream's position, which is where a group
        begins; the first `taken` batches of that group are skipped (a restored state)."""
        while True:
            start = self.stream.state()
            group = self._read_group()
            for index, pairs in enumerate(group[taken:], start=taken):
                if index + 1 < len(group):
                    after = {"stream": start, "batches_taken": index + 1}
                else:
                    after = {"stream": self.stream.state(), "batches_taken": 0}
                yield self._assemble(pairs), after
            taken = 0

    def _assemble(self, pairs: list[tuple[Example, Labelled]]) -> dict:
        examples = [example for example, _ in pairs]
        labels = [label for _, label in pairs]
        length = self._label_length(labels)
        arrays = [label_arrays(label.prompt, label.tokens, self.eos, length) for label in labels]
        batch = {
            "decoder_input_ids": np.stack([a[0] for a in arrays]),
            "labels": np.stack([a[1] for a in arrays]),
            "loss_mask": np.stack([a[2] for a in arrays]),
            "ids": [e.id for e in examples],
        }
        audio = batch_pcm16([e.audio for e in examples], N_SAMPLES)
        if self.spec.features_on == "host":
            batch["features"] = _host_log_mel(audio, self.spec.num_mel_bins)
        else:
            batch["audio"] = audio
        return batch

    def _produce(self) -> None:
        while True:
            try:
                item = next(self._groups)
            except Exception as error:  # surfaced to the consumer, not lost in the thread
                self._queue.put(error)
                return
            self._queue.put(item)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.prefetch == 0:
            batch, self._state = next(self._groups)
            return batch
        if self._queue is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            threading.Thread(target=self._produce, daemon=True).start()
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        batch, self._state = item
        return batch

    def state(self) -> dict:
        """The state after the last batch handed out (not after prefetched ones)."""
        return self._state

    def restore(self, state: dict) -> None:
        if self._queue is not None:
            raise FlaxDistilError("restore the data state before taking the first batch")
        self.stream.restore(state["stream"])
        self._groups = self._build_groups(taken=state["batches_taken"])
        self._state = state


def pad_labels(batch: dict, length: int, eos: int) -> dict:
    """`batch` with its label arrays padded to `length` (end-of-text inputs and labels, mask 0)."""
    current = batch["labels"].shape[1]
    if length == current:
        return batch
    padded = dict(batch)
    for key, value in (("decoder_input_ids", eos), ("labels", eos), ("loss_mask", 0)):
        padded[key] = np.pad(batch[key], ((0, 0), (0, length - current)), constant_values=value)
    return padded


def _host_log_mel(audio: np.ndarray, num_mel_bins: int) -> np.ndarray:
    import jax

    from flax_distil.audio import log_mel

    with jax.default_device(jax.devices("cpu")[0]):
        return np.asarray(log_mel(audio, num_mel_bins))
