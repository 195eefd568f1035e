"""`flax-distil convert`, `create-student` and `transcribe`: models in, models or text out."""

from __future__ import annotations

import argparse
import sys
import time

from flax_distil.cli.flags import (
    add_decoding_flags,
    add_draft_flags,
    add_long_form_flags,
    comma_separated,
    fallback_of,
    model_sources,
)


def add_convert(commands) -> None:
    from flax_distil.interop import SAVE_DTYPES

    parser = commands.add_parser(
        "convert",
        help="convert a Whisper checkpoint to a Hugging Face directory",
        description="Convert a Whisper checkpoint to a Hugging Face directory that transformers "
        "and flax-distil load.",
    )
    parser.add_argument(
        "source",
        help="Hugging Face directory or hub id, CTranslate2 directory, or one of: "
        + model_sources(),
    )
    parser.add_argument("output_dir", help="directory to write")
    parser.add_argument("--dtype", choices=sorted(SAVE_DTYPES), default="float32")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow PyTorch .bin weights (unpickling runs code from the file: trusted files only)",
    )
    parser.set_defaults(handler=convert)


def convert(args: argparse.Namespace) -> None:
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


def add_create_student(commands) -> None:
    from flax_distil.interop import SAVE_DTYPES

    parser = commands.add_parser(
        "create-student",
        help="make a student from a teacher's layers (Distil-Whisper initialisation)",
        description="Copy the teacher's encoder (all layers, or --encoder-layers maximally "
        "spaced) and maximally spaced decoder layers, first and last included.",
    )
    layer_ids = comma_separated(int, "layer ids")
    parser.add_argument("--teacher", required=True, help=f"teacher source ({model_sources()})")
    parser.add_argument("--decoder-layers", type=int, default=2)
    parser.add_argument("--decoder-layer-ids", type=layer_ids, help="explicit ids, e.g. 0,31")
    parser.add_argument("--encoder-layers", type=int, help="default: keep every encoder layer")
    parser.add_argument("--encoder-layer-ids", type=layer_ids, help="explicit ids")
    parser.add_argument("--output", required=True, help="Hugging Face directory to write")
    parser.add_argument("--dtype", choices=sorted(SAVE_DTYPES), default="float32")
    parser.set_defaults(handler=create_student)


def create_student(args: argparse.Namespace) -> None:
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


def add_transcribe(commands) -> None:
    parser = commands.add_parser(
        "transcribe",
        help="transcribe audio files (greedy, or speculative with --assistant)",
        description="Transcribe audio files with pure-JAX Whisper decoding. Clips over 30 s use "
        "long-form decoding.",
    )
    parser.add_argument("audio", nargs="+", help="audio files (WAV, FLAC, OGG, MP3)")
    parser.add_argument("--model", required=True, help=f"model source ({model_sources()})")
    parser.add_argument(
        "--assistant", help="draft model for speculative decoding (same output, faster)"
    )
    add_draft_flags(parser)
    add_decoding_flags(parser, batch_size=8)
    parser.add_argument("--timestamps", action="store_true", help="timestamped segments")
    add_long_form_flags(parser, default_mode="chunked, or sequential with --timestamps")
    parser.add_argument("--output-json", help="write results to this JSON file")
    parser.set_defaults(handler=transcribe)


def transcribe(args: argparse.Namespace) -> int:
    import json

    from flax_distil.generation import DecodeOptions, Transcriber
    from flax_distil.transcribe import transcribe_files

    options = DecodeOptions(
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        timestamps=args.timestamps,
        language=args.language,
        long_form=args.long_form,
        condition_on_previous=args.condition_on_previous,
        fallback=fallback_of(args),
        num_draft=args.num_draft if args.assistant else 0,
    )
    transcriber = Transcriber.load(
        args.model,
        assistant=args.assistant,
        dtype=args.dtype,
        draft_vocab=args.draft_vocab,
        shard_weights=args.shard_weights,
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
