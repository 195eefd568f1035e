"""Evaluation during training: teacher-forced losses and greedy-decoding WER on each eval set.

Eval sets are small (`eval.max_examples` each), decoded once at start-up and kept in memory;
every host holds all of them and contributes its own rows of each global batch. Loss batches
are padded to a multiple of the device count with copies whose loss mask is zero. Transcripts
come from `Transcriber.transcribe` on the training mesh, with the student's weights where the
train state holds them (the batch split over every device of every host).
"""

from __future__ import annotations

import jax
import numpy as np

from flax_distil.audio import N_SAMPLES, batch_audio
from flax_distil.data import label_arrays
from flax_distil.data.eval_set import EvalSet, load_eval_set
from flax_distil.generation import DecodeOptions, Transcriber
from flax_distil.metrics import word_error_rate
from flax_distil.parallel import global_batch
from flax_distil.train.run import Run, example_limits
from flax_distil.train.step import jit_eval_step


def _host_rows(batch: dict) -> dict:
    """This process's contiguous share of a batch every host built whole."""
    rows = len(batch["labels"]) // jax.process_count()
    start = jax.process_index() * rows
    return {k: v[start : start + rows] for k, v in batch.items()}


def eval_batches(eval_set: EvalSet, tokenizer, prompt, batch_size, max_label_length, num_devices):
    """(global batch as numpy dict, number of real rows) pairs, labels truncated to fit."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    padded = -(-batch_size // num_devices) * num_devices
    for start in range(0, len(eval_set), batch_size):
        rows = list(range(start, min(start + batch_size, len(eval_set))))
        real = len(rows)
        rows += [rows[-1]] * (padded - real)
        labels = []
        for row in rows:
            text = " " + eval_set.references[row]
            tokens = tokenizer(text, add_special_tokens=False).input_ids
            labels.append(label_arrays(prompt, tokens, eos, max_label_length))
        loss_mask = np.stack([r[2] for r in labels])
        loss_mask[real:] = 0.0
        batch = {
            "decoder_input_ids": np.stack([r[0] for r in labels]),
            "labels": np.stack([r[1] for r in labels]),
            "loss_mask": loss_mask,
            "audio": batch_audio([eval_set.audio[row] for row in rows], N_SAMPLES),
        }
        yield batch, real


def evaluate_sets(
    eval_sets: list[EvalSet],
    transcriber: Transcriber,
    losses,
    *,
    decoding: DecodeOptions,
    prompt: list[int],
    max_label_length: int,
) -> tuple[dict[str, dict[str, float]], dict[str, list[tuple[str, str]]]]:
    """({set: {loss, ce, kl, wer}}, {set: [(reference, prediction), ...]}): teacher-forced
    losses from `losses` (the jitted eval step on a global batch) and greedy transcripts."""
    mesh, tokenizer = transcriber.mesh, transcriber.tokenizer
    results, samples = {}, {}
    for eval_set in eval_sets:
        sums = {"objective": 0.0, "ce": 0.0, "kl": 0.0, "tokens": 0.0}
        for batch, _ in eval_batches(
            eval_set, tokenizer, prompt, decoding.batch_size, max_label_length, mesh.devices.size
        ):
            for name, value in losses(global_batch(mesh, _host_rows(batch))).items():
                sums[name] += float(value)
        predictions = [t.text for t in transcriber.transcribe(eval_set.audio, decoding)]
        references = eval_set.references
        tokens = max(sums["tokens"], 1.0)
        results[eval_set.name] = {
            "loss": sums["objective"] / tokens,
            "ce": sums["ce"] / tokens,
            "kl": sums["kl"] / tokens,
            "wer": word_error_rate(references, predictions),
        }
        samples[eval_set.name] = list(zip(references, predictions, strict=True))
    return results, samples


def make_eval(run: Run):
    """A function trainable -> ({set: metrics}, {set: samples}), or None without eval sets."""
    config = run.config
    if not config.data.eval:
        return None
    eval_sets = [
        load_eval_set(spec, config.eval.max_examples, example_limits(config))
        for spec in config.data.eval
    ]
    eval_step = jit_eval_step(
        run.models, run.settings, run.mesh, ("decoder_input_ids", "labels", "loss_mask", "audio")
    )
    checkpoint = run.student_checkpoint
    decoding = DecodeOptions(
        batch_size=config.eval.batch_size,
        max_new_tokens=config.eval.max_new_tokens,
        language=config.data.language if checkpoint.config.is_multilingual else None,
    )

    def evaluate(trainable):
        student = run.models.student(trainable)
        transcriber = Transcriber(
            student, checkpoint.tokenizer, checkpoint.generation, mesh=run.mesh
        )
        return evaluate_sets(
            eval_sets,
            transcriber,
            lambda batch: eval_step(trainable, run.models.frozen, batch),
            decoding=decoding,
            prompt=run.prompt,
            max_label_length=config.data.max_label_length,
        )

    return evaluate
