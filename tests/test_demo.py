"""`flax-distil demo` end to end at a tiny size, and real distillation with the tiny.en teacher.

One run covers two promises: the whole pipeline produces every artefact (report, plots, a
student transformers loads) and resumes instead of redoing; and a 2-layer student distilled
from tiny.en on 64 demo utterances for 30 steps improves its held-out WER.
"""

import json

import numpy as np

from flax_distil.demo import DemoOptions, run_demo
from flax_distil.train.metric_writer import read_metrics

from .conftest import torch_forward


def test_demo_runs_every_stage_learns_and_resumes(tmp_path, capsys):
    import matplotlib.image

    workdir = tmp_path / "demo"
    overrides = (
        "train.num_steps=30",
        "train.batch_size=2",
        "train.warmup_steps=3",
        "eval.every=30",
        "eval.max_examples=8",
        "checkpoint.every=30",
    )
    options = DemoOptions(num_utterances=64, num_heldout=8, overrides=overrides)
    result = run_demo(workdir, options)

    evals = read_metrics(workdir / "train", kind="eval/heldout")
    assert [e["step"] for e in evals] == [0, 30]
    assert evals[1]["wer"] < evals[0]["wer"], evals  # distillation helps on held-out text

    report = (workdir / "report" / "report.md").read_text()
    assert str(result["report"]).endswith("report.md")
    assert "heldout" in report and "real" in report and "identical" in report
    plots = sorted((workdir / "report").glob("*.png"))
    assert len(plots) == 2
    for plot in plots:
        assert matplotlib.image.imread(plot).ndim == 3
    comparison = json.loads((workdir / "report" / "compare.json").read_text())
    teacher = comparison["heldout"]["runs"]["teacher"]
    assert teacher["speculative_identical"] is True and teacher["num_samples"] == 8
    # The held-out sentences joined into one recording, decoded both ways by both models.
    assert "## Long-form: 1 recordings" in report
    for model in ("teacher", "student"):
        for mode in ("sequential", "chunked"):
            assert f"| {model} | {mode} |" in report
            assert result["long_form"][f"{model} {mode}"] is not None

    features, tokens = np.zeros((1, 80, 3000), np.float32), np.array([[50257]])
    _, _, info = torch_forward(workdir / "train" / "student", features, tokens, tmp_path)
    assert not any(info.values()), info  # transformers loads the exported student exactly

    capsys.readouterr()
    before = files_in(workdir)
    assert run_demo(workdir, options) == result  # the recorded results, timings included
    rerun = capsys.readouterr().out
    stages = ("speech", "pack", "pseudo-label", "create-student", "train", "compare", "long-form")
    assert rerun.count("done earlier") == len(stages), rerun
    for stage in stages:
        assert f"[{stage}] done earlier" in rerun, stage
    assert files_in(workdir) == before  # nothing redone: no file written, changed or removed


def files_in(directory):
    """{relative path: (size, modification time)} of every file under `directory`."""
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
