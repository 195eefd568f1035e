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


def add_plan(commands) -> None:
    from flax_distil.train.devices import DEVICES, memory_size

    parser = commands.add_parser(
        "plan",
        help="per-device memory and throughput of a training config on N accelerators",
        description="Compile the run's programs (train step with and without remat, "
        "pseudo-labelling, eval) at their real shapes with abstract weights on N CPU devices "
        "and print per device: parameter, optimiser and frozen bytes, each program's memory, "
        "the largest per-device batch that fits, and the samples/s the input pipeline must "
        "supply. Nothing is downloaded or allocated; CPU-compiled memory estimates the "
        "accelerator's.",
    )
    parser.add_argument("--config", required=True, help="training config (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument("--device", choices=sorted(DEVICES), required=True)
    parser.add_argument("--devices", type=int, required=True, help="how many of them")
    parser.add_argument(
        "--device-memory", type=memory_size, help="per device, e.g. 80GiB (default: the kind's)"
    )
    parser.add_argument(
        "--teacher", help="the teacher's shapes: a size (large-v3) or a directory with config.json"
    )
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    parser.add_argument("--label-max-new-tokens", type=int, default=224)
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    parser.set_defaults(handler=plan)


_PLAN_DEVICES = "FLAX_DISTIL_PLAN_DEVICES"


def plan(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import os
    import subprocess
    import sys

    from flax_distil.errors import FlaxDistilError
    from flax_distil.train import load_config
    from flax_distil.train.devices import DEVICES

    config = load_config(args.config, args.overrides)
    if args.devices < 1 or not 0 < args.mfu <= 1:
        raise FlaxDistilError("--devices must be at least 1 and --mfu in (0, 1]")
    if os.environ.get(_PLAN_DEVICES) != str(args.devices):
        # The CPU device count is fixed when jax starts: plan in a process that has N of them.
        flags = os.environ.get("XLA_FLAGS", "")
        env = {
            **os.environ,
            "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={args.devices}",
            "JAX_PLATFORMS": "cpu",
            _PLAN_DEVICES: str(args.devices),
        }
        return subprocess.run([sys.executable, "-m", "flax_distil", *args.argv], env=env).returncode
    from flax_distil.train.plan import describe_plan, model_shapes
    from flax_distil.train.plan import plan as make_plan

    device = DEVICES[args.device]
    if args.device_memory:
        device = dataclasses.replace(device, memory=args.device_memory)
    teacher = model_shapes(args.teacher or config.model.teacher)
    result = make_plan(
        config, device, teacher, mfu=args.mfu, label_max_new_tokens=args.label_max_new_tokens
    )
    print(f"plan: {args.config}, teacher {args.teacher or config.model.teacher}")
    print(describe_plan(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


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
