"""The frozen encoder's outputs kept in host memory per training example, for small datasets.

With a frozen encoder, its output for an example never changes, and it is most of a step's
work for a small student (a 30 s window through tiny.en's encoder costs ~37 GFLOP; the
decoders' whole step ~35). A run that sees each example many times (the demo: tens of epochs
over a few hundred windows) computes it once per example and feeds the train step the cached
output instead of the audio. Memory: 1500 x d_model float32 per example (2.3 MB for tiny,
7.7 MB for large-v3). Single-process runs only.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from flax_distil.errors import FlaxDistilError
from flax_distil.parallel import batch_sharding, state_shardings
from flax_distil.train.step import features_of


class EncoderCache:
    def __init__(self, models, num_mel_bins: int, mesh):
        if "encoder" not in models.frozen or "teacher_encoder" in models.frozen:
            raise FlaxDistilError(
                "data.cache_encoder_outputs needs a frozen encoder shared with the teacher "
                "(model.freeze_encoder=true and the teacher's encoder layers)"
            )
        if jax.process_count() > 1:
            raise FlaxDistilError("data.cache_encoder_outputs works in single-process runs only")
        self.mesh = mesh
        self.store: dict[str, np.ndarray] = {}
        self.encoded = 0  # examples run through the encoder
        self._encode = jax.jit(
            functools.partial(_encode, models.encoder_def, num_mel_bins),
            in_shardings=(state_shardings(mesh, models.frozen["encoder"]), None),
            out_shardings=batch_sharding(mesh),
        )

    def step_inputs(self, ids: list[str], arrays: dict, models) -> dict:
        """The step's inputs with `encoder_out` in place of the audio or features."""
        if any(i not in self.store for i in ids):
            outputs = np.asarray(self._encode(models.frozen["encoder"], arrays))
            for example_id, output in zip(ids, outputs, strict=True):
                self.store.setdefault(example_id, output)
            self.encoded += len(ids)
        encoder_out = np.stack([self.store[i] for i in ids])
        inputs = {k: v for k, v in arrays.items() if k not in ("audio", "features")}
        inputs["encoder_out"] = jax.device_put(encoder_out, batch_sharding(self.mesh))
        return inputs


def _encode(encoder_def, num_mel_bins, encoder_state, batch):
    encoder = nnx.merge(encoder_def, encoder_state["encoder"])
    return encoder(features_of(batch, num_mel_bins))
