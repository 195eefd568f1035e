"""`flax-distil train`, `export` and `demo`: distilling a student, writing it out, the demo."""

from __future__ import annotations

import argparse
import time

from flax_distil.cli.flags import add_distributed_flags, join


def add_train(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="distil a student from a teacher (resumes when the workdir has checkpoints)",
        description="Train a student with KL + cross-entropy against the teacher. The config "
        "is a YAML file (see configs/base.yaml for every key); section.key=value arguments "
        "override it. Rerunning on the same workdir resumes exactly.",
    )
    parser.add_argument("--config", help="YAML config (default: the built-in defaults)")
    parser.add_argument("--workdir", required=True, help="checkpoints, logs and the student")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build and compile the step, print parameter counts and per-device memory, exit",
    )
    add_distributed_flags(parser)
    parser.set_defaults(handler=train)


def train(args: argparse.Namespace) -> int:
    from flax_distil.train import load_config
    from flax_distil.train import train as run_training

    config = load_config(args.config, args.overrides)  # validated before any device work
    join(args)
    started = time.perf_counter()
    result = run_training(config, args.workdir, dry_run=args.dry_run)
    if args.dry_run or not result["finished"]:
        return 0
    minutes = (time.perf_counter() - started) / 60
    print(
        f"trained to step {config.train.num_steps} in {minutes:.1f} min; student exported to "
        f"{args.workdir}/student; logs: tensorboard --logdir {args.workdir}/tensorboard"
    )
    return 0


def add_export(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="write a training checkpoint's student as a Hugging Face directory",
        description="Export the student of a checkpoint in a training workdir (the latest by "
        "default) as a directory transformers and flax-distil load.",
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--output", required=True)
    parser.set_defaults(handler=export)


def export(args: argparse.Namespace) -> None:
    from flax_distil.train import export_from_workdir

    step = export_from_workdir(args.workdir, args.output, step=args.step)
    print(f"wrote the student of step {step} to {args.output}")


def add_demo(commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="the whole pipeline offline on a CPU: speech, pseudo-labels, student, report",
        description="Synthesise speech, pseudo-label it with the teacher, create and distil a "
        "2-layer student, and compare teacher, student and speculative decoding on held-out "
        "and real speech. Rerunning resumes.",
    )
    parser.add_argument("--workdir", default="demo-run")
    parser.add_argument("--teacher", default="pypi:tiny.en")
    parser.add_argument("--num-utterances", type=int, default=720, help="training utterances")
    parser.add_argument("--num-heldout", type=int, default=48, help="held-out utterances")
    parser.add_argument("--config", help="training config (default: configs/tiny_en_demo.yaml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.set_defaults(handler=demo)


def demo(args: argparse.Namespace) -> None:
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
