"""Ablation of the v3 long-form recipe at demo scale: a student distilled with timestamps and
previous-text prompts vs one distilled without, on the same data for the same steps.

    .venv/bin/python run_scripts/ablation_longform.py --demo /tmp/demo [--workdir /tmp/ablation]
        [--num-utterances 240] [--seconds 120]

`--demo` is a finished `flax-distil demo` workdir: its student (trained with the demo config:
`data.timestamp_probability` 0.5, `data.condition_on_prev_probability` 0.3, or as the demo's
overrides set them) is the recipe student. This script trains the plain student from the same
initial student on the same pseudo-labels with the run's own resolved config, changing only
those two keys to 0 (labels without timestamps, no previous-text prompt). Long recordings are
made offline as in `bench_longform.py` (held-out Piper speech of a text neither student saw,
joined with 0.3-1.2 s pauses into files of up to `--seconds`). Teacher and both students then
decode every recording sequentially (OpenAI's algorithm with temperature fallback), sequentially
without previous-text prompts (`--no-condition-on-previous`), and chunked (15 s windows); the
script prints the long-form table (WER as a fraction shown in percent, insertions, deletions,
5-Dup, windows decoded again) and writes every run's metrics under WORKDIR/results.
"""

import argparse
import json
import sys
from pathlib import Path

from bench_common import pin_threads
from bench_longform import MIN_SECONDS, long_recordings

RECIPE_KEYS = ("timestamp_probability", "condition_on_prev_probability")


def plain_student(resolved: dict, workdir: Path) -> Path:
    """Trains (or resumes) the student of the recipe run's config without timestamps or
    previous-text prompts."""
    import yaml

    from flax_distil.train import load_config, train

    print("recipe student's settings:", {k: resolved["data"][k] for k in RECIPE_KEYS})
    resolved = {**resolved, "data": {**resolved["data"], **dict.fromkeys(RECIPE_KEYS, 0.0)}}
    path = workdir / "plain.yaml"
    path.write_text(yaml.safe_dump(resolved))
    run = workdir / "plain"
    if not (run / "student").exists():
        train(load_config(path, []), run)
    return run / "student"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished demo workdir")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/flax-distil-ablation"))
    parser.add_argument("--num-utterances", type=int, default=240)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pin_threads(args.threads)
    if not (args.demo / "train" / "student").exists():
        sys.exit(f"error: {args.demo} holds no finished demo (run flax-distil demo first)")
    args.workdir.mkdir(parents=True, exist_ok=True)

    import yaml

    from flax_distil.compare import long_form_comparison
    from flax_distil.data import SourceSpec
    from flax_distil.data.eval_set import EvalSet, load_eval_set
    from flax_distil.evaluate import EvaluateOptions
    from flax_distil.generation import Transcriber

    folder = long_recordings(args.workdir, args.num_utterances, args.seconds)
    data = load_eval_set(SourceSpec("parquet", str(folder)))
    keep = [i for i, clip in enumerate(data.audio) if len(clip) >= MIN_SECONDS * 16000]
    data = EvalSet(
        data.name,
        [data.ids[i] for i in keep],
        [data.audio[i] for i in keep],
        [data.references[i] for i in keep],
        [data.files[i] for i in keep],
        data.skipped,
    )
    minutes = sum(len(clip) for clip in data.audio) / 16000 / 60
    print(f"{len(data)} recordings of at least {MIN_SECONDS:.0f} s, {minutes:.1f} min of audio")

    resolved = yaml.safe_load((args.demo / "train" / "config.yaml").read_text())
    models = {
        "teacher": Transcriber.load(resolved["model"]["teacher"]),
        "recipe student": Transcriber.load(str(args.demo / "train" / "student")),
        "plain student": Transcriber.load(str(plain_student(resolved, args.workdir))),
    }
    options = EvaluateOptions(batch_size=16)
    table, runs = long_form_comparison(
        models, data, options, args.workdir / "results", without_previous_text=True
    )
    print("\n".join(table))
    summary = {name: run["long_form"]["wer"] for name, run in runs.items()}
    (args.workdir / "results" / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())
