"""The train step's inputs already on the devices: batch t + 1 is sent while step t runs.

    inputs = DeviceBatches(train_batches(run), run.mesh)
    batch, arrays = next(inputs)  # host batch (ids, label length) and its global device arrays
    checkpoint_data_state = inputs.state()  # after the last batch *returned*, not the one ahead

Each call hands out the batch put on the devices by the previous call and puts the next one
(`jax.make_array_from_process_local_data` dispatches its copy asynchronously), so the host-to-
device copy of the next batch overlaps the current step instead of preceding the next one. It
all runs in the caller's thread: with `label_bucket` on several processes the label length is
agreed by a collective, which every host must issue in the same order as its other collectives.
"""

from __future__ import annotations

import jax
import numpy as np

from flax_distil import parallel
from flax_distil.data.batches import Batches, pad_labels
from flax_distil.errors import FlaxDistilError
from flax_distil.train.run import STEP_INPUTS


def agreed_label_length(local_length: int) -> int:
    """The longest label length over all processes (their rows form one global array)."""
    return int(np.max(parallel.allgather(np.int32(local_length))))


class DeviceBatches:
    """`(host batch, step inputs on the devices)` one batch ahead, with `Batches`' exact resume."""

    def __init__(self, batches: Batches, mesh):
        self.batches, self.mesh = batches, mesh
        self._ahead = None  # (host batch, device arrays, Batches state after it)
        self._state = batches.state()

    @property
    def stream(self):
        return self.batches.stream

    @property
    def eos(self) -> int:
        return self.batches.eos

    def __iter__(self):
        return self

    def __next__(self) -> tuple[dict, dict]:
        current = self._ahead if self._ahead is not None else self._put(next(self.batches))
        self._ahead = self._put(next(self.batches))
        batch, arrays, self._state = current
        return batch, arrays

    def _put(self, batch: dict) -> tuple[dict, dict, dict]:
        state = self.batches.state()
        if self.batches.spec.label_bucket and jax.process_count() > 1:
            # Label lengths vary per batch: every host's rows must be as long as the longest.
            batch = pad_labels(batch, agreed_label_length(batch["labels"].shape[1]), self.eos)
        arrays = parallel.global_batch(
            self.mesh, {k: v for k, v in batch.items() if k in STEP_INPUTS}
        )
        return batch, arrays, state

    def state(self) -> dict:
        """The data state after the last batch handed out (the one on the devices ahead is
        read again after a restore)."""
        return self._state

    def restore(self, state: dict) -> None:
        if self._ahead is not None:
            raise FlaxDistilError("restore the data state before taking the first batch")
        self.batches.restore(state)
        self._state = state
