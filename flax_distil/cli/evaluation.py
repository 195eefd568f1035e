"""`flax-distil evaluate` and `compare`: WER, hallucination metrics, speed and noise, reports."""

from __future__ import annotations

import argparse

from flax_distil.cli.flags import (
    DATASETS,
    add_dataset_flags,
    add_decoding_flags,
    add_draft_flags,
    add_long_form_flags,
    comma_separated,
    dataset_spec,
    fallback_of,
    model_sources,
)
from flax_distil.errors import FlaxDistilError


def _add_evaluation_flags(parser: argparse.ArgumentParser) -> None:
    add_dataset_flags(parser, text_help="the reference transcripts", streaming=True)
    parser.add_argument("--output", required=True, help="directory to write results to")
    add_decoding_flags(parser, batch_size=8)
    parser.add_argument("--max-samples", type=int, help="evaluate the first N rows only")
    add_draft_flags(parser)
    parser.add_argument("--noise", choices=["white", "babble"], help="also evaluate with noise")
    parser.add_argument(
        "--snr",
        type=comma_separated(float, "dB levels"),
        help="with --noise: signal-to-noise ratios in dB, e.g. 10,5,0",
    )
    add_long_form_flags(parser, default_mode="chunked")


def _options(args: argparse.Namespace):
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
        long_form=args.long_form or "chunked",
        condition_on_previous=args.condition_on_previous,
        fallback=fallback_of(args),
    )


def add_evaluate(commands) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="WER, hallucination metrics, speed (and noise robustness) on a labelled dataset",
        description="Transcribe a labelled dataset and write metrics.json (WER, orthographic "
        "WER, insertion / substitution / deletion rates, repeated 5-grams, RTFx; with "
        "--assistant, speculative decoding's speed-up and identity) and predictions.jsonl. "
        "Unreadable rows are reported and skipped.",
    )
    parser.add_argument("--model", required=True, help=f"model source ({model_sources()})")
    parser.add_argument("--assistant", help="draft model: also time speculative decoding")
    parser.add_argument("--dataset", required=True, help=DATASETS)
    _add_evaluation_flags(parser)
    parser.set_defaults(handler=evaluate)


def evaluate(args: argparse.Namespace) -> None:
    from flax_distil.evaluate import evaluate as score
    from flax_distil.evaluate import summary
    from flax_distil.generation import Transcriber

    options = _options(args)  # checked before the model loads
    spec = dataset_spec(args, args.dataset)
    transcriber = Transcriber.load(
        args.model,
        assistant=args.assistant,
        dtype=args.dtype,
        draft_vocab=options.draft_vocab,
        shard_weights=args.shard_weights,
    )
    metrics = score(
        transcriber,
        spec,
        options,
        args.output,
        model_name=args.model,
        assistant_name=args.assistant,
    )
    print(summary(metrics))
    print(f"wrote {args.output}/metrics.json and predictions.jsonl")


def add_compare(commands) -> None:
    parser = commands.add_parser(
        "compare",
        help="teacher vs student (and speculative decoding) on the same data: report and plots",
        description="Evaluate the teacher, the student, and the teacher with the student "
        "drafting (speculative decoding) on each dataset, and write report.md with PNG plots "
        "(WER vs speed; WER vs SNR with --noise).",
    )
    parser.add_argument(
        "--teacher", required=True, help=f"teacher model source ({model_sources()})"
    )
    parser.add_argument("--student", required=True, help="student model source")
    parser.add_argument(
        "--dataset",
        required=True,
        action="append",
        help=f"{DATASETS}; as NAME=PATH to name it in the report; repeat for several",
    )
    _add_evaluation_flags(parser)
    parser.set_defaults(handler=compare)


def _named_dataset(text: str) -> tuple[str, str]:
    """NAME=PATH, or PATH (named after its last path part)."""
    name, sep, path = text.partition("=")
    if sep and name and "/" not in name:
        return name, path
    return text.rstrip("/").rsplit("/", 1)[-1] or text, text


def compare(args: argparse.Namespace) -> None:
    from flax_distil.compare import compare as report

    options = _options(args)
    datasets = {}
    for argument in args.dataset:
        name, path = _named_dataset(argument)
        if name in datasets:
            raise FlaxDistilError(f"two datasets named {name!r}; name them: --dataset NAME=PATH")
        datasets[name] = dataset_spec(args, path)
    written = report(
        args.teacher,
        args.student,
        datasets,
        args.output,
        options,
        dtype=args.dtype,
        shard_weights=args.shard_weights,
    )
    print(f"wrote {written} (plots and per-model metrics beside it)")
