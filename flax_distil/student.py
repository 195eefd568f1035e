"""Student creation: a copy of the teacher with some of its layers, as Distil-Whisper builds it.

The whole encoder is kept by default (it is frozen during distillation) and the decoder keeps
maximally spaced layers, first and last always (`linspace(0, L-1, N)` rounded: {0, 31} of 32
for N = 2). Works on `Checkpoint`s, so a student is written and loaded like any model.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from flax_distil.errors import FlaxDistilError
from flax_distil.interop.checkpoint import Checkpoint

_LAYER = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.*)$")


def spaced_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """Maximally spaced layer ids including the first and the last."""
    if not 1 <= num_student_layers <= num_teacher_layers:
        raise FlaxDistilError(
            f"a student needs 1 to {num_teacher_layers} layers, not {num_student_layers}"
        )
    ids = np.linspace(0, num_teacher_layers - 1, num_student_layers)
    return [int(i) for i in np.round(ids)]


def _check_ids(ids: list[int], available: int, side: str) -> None:
    if not ids or len(set(ids)) != len(ids) or not all(0 <= i < available for i in ids):
        raise FlaxDistilError(
            f"{side} layer ids {ids} must be distinct and within 0..{available - 1}"
        )


def make_student(
    teacher: Checkpoint,
    *,
    decoder_layer_ids: list[int],
    encoder_layer_ids: list[int] | None = None,
) -> Checkpoint:
    """A student checkpoint whose layer i is a copy of the teacher's layer ids[i]."""
    config = teacher.config
    encoder_layer_ids = (
        list(range(config.encoder_layers)) if encoder_layer_ids is None else encoder_layer_ids
    )
    _check_ids(decoder_layer_ids, config.decoder_layers, "decoder")
    _check_ids(encoder_layer_ids, config.encoder_layers, "encoder")
    chosen = {"encoder": encoder_layer_ids, "decoder": decoder_layer_ids}
    weights = {}
    for name, array in teacher.weights.items():
        match = _LAYER.match(name)
        if match is None:
            weights[name] = array
            continue
        side, index, rest = match.group(1), int(match.group(2)), match.group(3)
        if index in chosen[side]:
            weights[f"model.{side}.layers.{chosen[side].index(index)}.{rest}"] = array
    student_config = dataclasses.replace(
        config, encoder_layers=len(encoder_layer_ids), decoder_layers=len(decoder_layer_ids)
    )
    return Checkpoint(
        student_config,
        weights,
        teacher.tokenizer,
        dict(teacher.generation),
        source=f"student of {teacher.source}",
    )
