"""`flax-distil make-demo-data`, `pack` and `pseudo-label`: making, packing and labelling data."""

from __future__ import annotations

import argparse
import time

from flax_distil.cli.flags import (
    DATASETS,
    add_dataset_flags,
    add_decoding_flags,
    add_distributed_flags,
    dataset_spec,
    join,
    model_sources,
)


def add_make_demo_data(commands) -> None:
    parser = commands.add_parser(
        "make-demo-data",
        help="synthesise labelled English speech offline (Piper TTS) as an audiofolder",
        description="Speak public-domain sentences with Piper's bundled US English voice "
        "(a separate process) and write DIR/metadata.csv + DIR/clips/*.flac.",
    )
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-utterances", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text", choices=["arctic", "nowhere"], default="arctic")
    parser.add_argument("--noise", choices=["white", "babble"])
    parser.add_argument("--snr", type=float, help="signal-to-noise ratio in dB, with --noise")
    parser.add_argument("--workers", type=int, help="parallel Piper processes (default: cores)")
    parser.set_defaults(handler=make_demo_data)


def make_demo_data(args: argparse.Namespace) -> None:
    from flax_distil.demo_speech import make_demo_data as synthesise

    started = time.perf_counter()
    output = synthesise(
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


def add_pack(commands) -> None:
    parser = commands.add_parser(
        "pack",
        help="join consecutive utterances of a speaker (or recording) into 30 s windows",
        description="Concatenate consecutive utterances of the same group (dataset order kept) "
        "into windows of at most --max-seconds and write parquet shards: FLAC audio, the "
        "joined text, the group, and condition_on_prev (the previous window's text of the same "
        "group) for previous-text prompts in training.",
    )
    parser.add_argument("--dataset", required=True, help=DATASETS)
    add_dataset_flags(parser, text_help="the transcripts to join")
    parser.add_argument("--output", required=True, help="directory for the parquet shards")
    parser.add_argument("--group-column", help="speaker or recording id (default: one group)")
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--gap-seconds", type=float, default=0.0, help="silence between them")
    parser.add_argument("--shard-size", type=int, default=500, help="windows per parquet file")
    parser.add_argument(
        "--cut-speech",
        action="store_true",
        help="fill each full window to --max-seconds with the start of the next utterance, cut "
        "off, as the windows of sequential long-form decoding are (its text stays whole "
        "utterances; the next window starts with that utterance)",
    )
    parser.set_defaults(handler=pack)


def pack(args: argparse.Namespace) -> None:
    from flax_distil.data.packing import PackOptions
    from flax_distil.data.packing import pack as pack_windows

    options = PackOptions(
        group_column=args.group_column,
        max_seconds=args.max_seconds,
        gap_seconds=args.gap_seconds,
        shard_size=args.shard_size,
        cut_speech=args.cut_speech,
    )
    counts = pack_windows(dataset_spec(args, args.dataset), args.output, options)
    skipped = ", ".join(f"{n} {reason}" for reason, n in counts["skipped"].items()) or "none"
    print(
        f"wrote {counts['windows']} windows of {counts['utterances']} utterances to "
        f"{args.output} (skipped: {skipped})"
    )


def add_pseudo_label(commands) -> None:
    parser = commands.add_parser(
        "pseudo-label",
        help="transcribe a dataset with a teacher into parquet shards (restartable, multi-host)",
        description="Greedy-decode every row of a dataset with the teacher and write parquet "
        "shards with the original columns plus whisper_transcript, whisper_token_ids and wer "
        "(against --text-column); with --streaming, one set of shards per data file of the "
        "dataset. Rerun the same command to resume after a crash. Multi-host: "
        "give --coordinator/--num-processes/--process-id on each host, or --distributed where "
        "jax.distributed.initialize() detects the cluster (Cloud TPU, SLURM).",
    )
    parser.add_argument("--model", required=True, help=f"teacher model source ({model_sources()})")
    parser.add_argument("--dataset", required=True, help=DATASETS)
    add_dataset_flags(parser, text_help="ground truth for the wer column", streaming=True)
    parser.add_argument("--output", required=True, help="directory for the parquet shards")
    add_decoding_flags(parser, batch_size=16)
    parser.add_argument(
        "--shard-size",
        type=int,
        default=1000,
        help="rows per parquet shard (--streaming: per part of a data file's shard)",
    )
    parser.add_argument("--timestamps", action="store_true", help="decode with timestamp tokens")
    parser.add_argument(
        "--wer-threshold",
        type=float,
        default=0.1,
        help="a fraction; _summary.json counts the rows within it (filter at training time)",
    )
    add_distributed_flags(parser)
    parser.set_defaults(handler=pseudo_label)


def pseudo_label(args: argparse.Namespace) -> None:
    from flax_distil.metrics import percent
    from flax_distil.pseudo_label import PseudoLabelOptions
    from flax_distil.pseudo_label import pseudo_label as label

    options = PseudoLabelOptions(
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        timestamps=args.timestamps,
        language=args.language,
        max_new_tokens=args.max_new_tokens,
        wer_threshold=args.wer_threshold,
        dtype=args.dtype,
        shard_weights=args.shard_weights,
    )
    join(args)
    summary = label(args.model, dataset_spec(args, args.dataset), args.output, options)
    if summary is not None:  # process 0
        skipped = sum(summary["skipped"].values())
        print(
            f"wrote {args.output}: {summary['labelled']} of {summary['examples']} examples "
            f"labelled ({skipped} skipped), {summary['audio_hours']:.2f} h of audio, mean WER "
            f"{percent(summary['mean_wer'])}, {summary['kept']} within "
            f"{percent(options.wer_threshold)} WER; "
            f"{summary['audio_seconds_per_second']:.1f} audio s per s; see _summary.json"
        )
