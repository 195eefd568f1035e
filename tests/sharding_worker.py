"""Decoding and training on 8 CPU devices vs 1, for tests/test_sharding.py; not a test.

    python sharding_worker.py TEACHER_DIR CORPUS_DIR OUT.json

Sets 8 CPU devices before jax starts, then measures, with a tiny random teacher and a 2-layer
student made from it: the shardings of features, encoder output and tokens; the collectives in
the compiled log-mel, encoder, greedy and speculative programs and in the train step; the
per-device memory of log-mel + encoder + greedy decoding at batch 64 on 8 devices and on 1;
and the transcripts (greedy and speculative), pseudo-labels, evaluation and evaluation during
training on 8 devices and on 1. Writes what it found as JSON.
"""

import json
import os
import re
import sys
from pathlib import Path


def collectives(compiled) -> list[str]:
    """The all-gather / all-to-all ops of a compiled program, as `kind shape` strings."""
    found = []
    for line in compiled.as_text().splitlines():
        match = re.search(r"= (\S+) (all-gather|all-to-all)\(", line)
        if match:
            found.append(f"{match.group(2)} {match.group(1)}")
    return found


def main(teacher_dir: str, corpus_dir: str, out_path: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    import numpy as np

    from flax_distil import parallel
    from flax_distil.audio import batch_audio, log_mel
    from flax_distil.data import SourceSpec
    from flax_distil.data.eval_set import load_eval_set
    from flax_distil.evaluate import EvaluateOptions, evaluate
    from flax_distil.generation import DecodeOptions, Transcriber
    from flax_distil.generation.greedy import encode, greedy_decode
    from flax_distil.generation.speculative import speculative_decode
    from flax_distil.interop import build_model, load_checkpoint
    from flax_distil.pseudo_label import PseudoLabelOptions, pseudo_label
    from flax_distil.student import make_student
    from flax_distil.train import build_run, load_config
    from flax_distil.train.eval import make_eval
    from flax_distil.train.optimizer import make_optimizer
    from flax_distil.train.run import batch_shapes, sharded_state
    from flax_distil.train.step import jit_train_step

    checkpoint = load_checkpoint(teacher_dir)
    draft = make_student(checkpoint, decoder_layer_ids=[0, 3])
    one = parallel.make_mesh(devices=jax.devices()[:1])

    def transcriber(mesh=None):
        model, student = build_model(checkpoint), build_model(draft)
        return Transcriber(model, checkpoint.tokenizer, checkpoint.generation, student, mesh=mesh)

    eight, single = transcriber(), transcriber(one)
    result = {"devices": len(jax.devices()), "mesh": dict(eight.mesh.shape)}

    # Shardings and collectives of the decoding programs, batch 64 on 8 devices.
    rng = np.random.default_rng(0)
    audio = batch_audio([0.1 * rng.standard_normal(16000 * 4, np.float32) for _ in range(64)])
    placed = eight.place_rows(audio)
    features = log_mel(placed, 80)
    encoder_out = eight.encode(features)
    prompts = eight.place_rows(eight.prompts(encoder_out))
    decoding = dict(rules=eight.rules(False), max_new_tokens=16, rows=eight.row_sharding)
    args = (eight.graphdef, eight.state, encoder_out, prompts, None)
    tokens = greedy_decode(*args, **decoding)
    spec_args = (eight.graphdef, eight.state, *eight.assistant, encoder_out, prompts, None)
    arrays = {"features": features, "encoder_out": encoder_out, "tokens": tokens}
    result["shardings"] = {
        name: {"spec": str(array.sharding.spec), "shards": len(array.sharding.device_set)}
        for name, array in arrays.items()
    }
    result["collectives"] = {
        "log_mel": collectives(log_mel.lower(placed, 80).compile()),
        "encode": collectives(
            encode.lower(eight.graphdef, eight.state, features, rows=eight.row_sharding).compile()
        ),
        "greedy": collectives(greedy_decode.lower(*args, **decoding).compile()),
        "speculative": collectives(
            speculative_decode.lower(*spec_args, num_draft=3, **decoding).compile()
        ),
    }

    def decode_memory(t):
        """Per-device temporary bytes of log-mel + encoder + greedy decoding, batch 64."""

        def program(state, audio):
            features = log_mel(audio, 80)
            out = encode(t.graphdef, state, features, rows=t.row_sharding)
            prompts = np.tile(np.asarray(t.prompts(encoder_out[:1])[0]), (64, 1))
            return greedy_decode(
                t.graphdef,
                state,
                out,
                prompts,
                rules=t.rules(False),
                max_new_tokens=16,
                rows=t.row_sharding,
            )

        compiled = jax.jit(program).lower(t.state, t.place_rows(audio)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    result["decode_temp_bytes"] = {"8": decode_memory(eight), "1": decode_memory(single)}

    # The same transcripts, pseudo-labels and evaluation on 8 devices as on 1.
    corpus = Path(corpus_dir)
    clips = load_eval_set(SourceSpec("audiofolder", str(corpus))).audio
    result["transcripts"] = {}
    for name, num_draft in (("greedy", 0), ("speculative", 3)):
        chosen = DecodeOptions(batch_size=8, max_new_tokens=12, num_draft=num_draft)
        result["transcripts"][name] = [
            [t.tokens for t in eight.transcribe(clips, chosen)],
            [t.tokens for t in single.transcribe(clips, chosen)],
        ]
    spec = SourceSpec("audiofolder", str(corpus))
    labels = {}
    for name, t in (("8", eight), ("1", single)):
        output = Path(out_path).parent / f"labels{name}"
        pseudo_label(t, spec, output, PseudoLabelOptions(batch_size=8, max_new_tokens=12))
        import pyarrow.parquet as pq

        table = pq.read_table(sorted(output.glob("shard-*.parquet"))[0])
        labels[name] = table["whisper_token_ids"].to_pylist()
    result["pseudo_labels"] = [labels["8"], labels["1"]]
    evaluation = EvaluateOptions(batch_size=8, max_new_tokens=12)
    result["evaluate"] = [
        evaluate(t, load_eval_set(spec), evaluation)["wer"] for t in (eight, single)
    ]

    # Evaluation during training on 8 devices and on 1, and the train step's collectives.
    overrides = [
        f"model.teacher={teacher_dir}",
        f"data.train=[{{kind: audiofolder, path: {corpus}}}]",
        f"data.eval=[{{kind: audiofolder, path: {corpus}, name: clips}}]",
        "data.max_label_length=16",
        "train.batch_size=8",
        "eval.batch_size=8",
        "eval.max_new_tokens=12",
    ]
    config = load_config(None, overrides)
    evals = {}
    for name, devices in (("8", jax.devices()), ("1", jax.devices()[:1])):
        run = build_run(config, Path(out_path).parent / f"run{name}", devices)
        optimizer, schedule = make_optimizer(config.train)
        state, _ = sharded_state(run, optimizer)
        metrics, samples = make_eval(run)(state["params"])
        evals[name] = {"wer": metrics["clips"]["wer"], "predictions": samples["clips"]}
        if name == "8":
            step = jit_train_step(
                run.models, run.settings, optimizer, schedule, run.mesh, state, batch_shapes(run)
            )
            compiled = step.lower(state, run.models.frozen, batch_shapes(run)).compile()
            result["collectives"]["train_step"] = collectives(compiled)
    result["training_eval"] = [evals["8"], evals["1"]]
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
