"""`flax-distil plan`: per-device memory from abstract weights, as a real run compiles it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flax_distil.train.plan import Fit
from flax_distil.whisper import WhisperConfig

from ..conftest import checkout_env, run_cli
from .conftest import settings

WORKER = Path(__file__).parent / "train_worker.py"


def test_plan_equals_the_dry_run_of_the_same_config(tiny_teacher, corpus, tmp_path):
    """The plan compiles the same step as `train --dry-run` on real weights: same bytes."""
    overrides = settings(tiny_teacher, corpus, **{"train.batch_size": 8})
    out = tmp_path / "plan.json"
    planned = run_cli(
        "plan",
        "--config",
        Path(__file__).parents[2] / "configs" / "base.yaml",
        "--device",
        "v4",
        "--devices",
        "2",
        "--teacher",
        tiny_teacher,
        "--json",
        out,
        *overrides,
    )
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "2 x TPU v4 (32.00 GiB each)" in planned.stdout and "fits" in planned.stdout
    plan = json.loads(out.read_text())
    dry_run = tmp_path / "dry-run.json"
    command = [sys.executable, str(WORKER), "2", str(tmp_path / "w"), *overrides]
    result = subprocess.run(
        [*command, "--dry-run", str(dry_run)], capture_output=True, text=True, env=checkout_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    step = plan["train_step"]["no_remat"]  # the config's setting (remat off) comes first
    assert step["memory"] == json.loads(dry_run.read_text())["memory"]
    assert step["total"] > 0 and step["per_row"] > 0 and step["most_rows"] > 4
    remat = plan["train_step"]["remat"]
    assert remat["memory"]["temporaries"] < step["memory"]["temporaries"]  # remat saves memory
    assert plan["pseudo_label"]["per_row"] > 0 and plan["eval"]["per_row"] > 0
    assert plan["rows_per_device"] == 4 and plan["devices"] == 2


def test_line_through_two_batch_sizes():
    fit = Fit.through((2, 4), (10, 16))
    assert (fit.fixed, fit.per_row) == (4.0, 3.0)
    assert fit.most_rows(100) == 32 and fit.most_rows(3) == 0


@pytest.mark.parametrize("size", ["tiny.en", "base", "large-v3"])
def test_named_sizes_have_the_released_shapes(size):
    config = WhisperConfig.named(size)
    expected = {"tiny.en": (384, 4, 51864, 80), "base": (512, 6, 51865, 80)}
    expected["large-v3"] = (1280, 32, 51866, 128)
    assert (config.d_model, config.decoder_layers, config.vocab_size, config.num_mel_bins) == (
        expected[size]
    )


def test_unknown_teacher_shapes_are_a_one_line_error(tmp_path):
    result = run_cli(
        "plan",
        "--config",
        Path(__file__).parents[2] / "configs" / "base.yaml",
        "--device",
        "h200",
        "--devices",
        "1",
        "--teacher",
        "someone/custom-model",
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot tell the shapes of 'someone/custom-model'")
