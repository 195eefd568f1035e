"""Evaluation during training: teacher-forced losses and greedy-decoding WER on each eval set.

Eval sets are small (`eval.max_examples` each), decoded once at start-up and kept in memory;
every host holds all of them and contributes its own rows of each global batch. Batches are
padded to a multiple of the device count with copies whose loss mask is zero, and their
predictions are dropped.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from flax_distil.audio import N_SAMPLES, batch_audio
from flax_distil.data import label_arrays
from flax_distil.data.eval_set import EvalSet, load_eval_set
from flax_distil.generation.greedy import greedy_decode
from flax_distil.generation.rules import LogitRules
from flax_distil.metrics import word_error_rate
from flax_distil.parallel import allgather, global_batch
from flax_distil.train.run import Run, example_limits
from flax_distil.train.step import DistillModels, features_of, jit_eval_step, student_frozen_parts


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


@functools.partial(jax.jit, static_argnums=(0, 3))
def _encode(student_def, trainable, frozen, num_mel_bins, batch):
    student = nnx.merge(student_def, trainable, *student_frozen_parts(frozen))
    return student.encode(features_of(batch, num_mel_bins))


def evaluate_sets(
    eval_sets,
    models: DistillModels,
    trainable,
    eval_step,
    *,
    mesh,
    tokenizer,
    prompt,
    rules,
    batch_size,
    max_label_length,
    max_new_tokens,
    num_mel_bins,
) -> tuple[dict[str, dict[str, float]], dict[str, list[tuple[str, str]]]]:
    """({set: {loss, ce, kl, wer}}, {set: [(reference, prediction), ...]})."""
    state = nnx.merge_state(trainable, *student_frozen_parts(models.frozen))
    results, samples = {}, {}
    for eval_set in eval_sets:
        sums = {"objective": 0.0, "ce": 0.0, "kl": 0.0, "tokens": 0.0}
        predictions = []
        for batch, real in eval_batches(
            eval_set, tokenizer, prompt, batch_size, max_label_length, mesh.devices.size
        ):
            arrays = global_batch(mesh, _host_rows(batch))
            for name, value in eval_step(trainable, models.frozen, arrays).items():
                sums[name] += float(value)
            encoder_out = _encode(
                models.student_def, trainable, models.frozen, num_mel_bins, arrays
            )
            prompts = np.tile(np.asarray(prompt, np.int32), (len(batch["labels"]), 1))
            tokens = greedy_decode(
                models.student_def,
                state,
                encoder_out,
                prompts,
                rules=rules,
                max_new_tokens=max_new_tokens,
            )
            for row in allgather(tokens, tiled=True)[:real]:
                predictions.append(tokenizer.decode(row.tolist(), skip_special_tokens=True).strip())
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


def eval_rules(run: Run) -> LogitRules:
    return LogitRules.from_generation_config(
        run.student_checkpoint.generation, run.student_checkpoint.tokenizer
    )


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
    rules = eval_rules(run)

    def evaluate(trainable):
        return evaluate_sets(
            eval_sets,
            run.models,
            trainable,
            eval_step,
            mesh=run.mesh,
            tokenizer=run.student_checkpoint.tokenizer,
            prompt=run.prompt,
            rules=rules,
            batch_size=config.eval.batch_size,
            max_label_length=config.data.max_label_length,
            max_new_tokens=config.eval.max_new_tokens,
            num_mel_bins=run.settings.num_mel_bins,
        )

    return evaluate
