"""Run metrics: TensorBoard event files and a `metrics.jsonl` log, written by process 0 only.

`metrics.jsonl` has one line per logged step (train scalars) or eval; a resumed run first cuts
the lines after the restored step, so the file always tells one uninterrupted history.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from flax_distil.metrics import json_safe


class MetricWriter:
    def __init__(self, workdir: str | Path, resume_step: int = 0):
        self.active = jax.process_index() == 0
        self.log_path = Path(workdir) / "metrics.jsonl"
        self.writer = None
        if not self.active:
            return
        from tensorboardX import SummaryWriter

        _truncate_after(self.log_path, resume_step)
        self.writer = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=resume_step + 1)

    def scalars(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        if not self.active:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{kind}/{name}", value, step)
        record = {"step": step, "kind": kind, **json_safe({k: float(v) for k, v in values.items()})}
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def text(self, step: int, tag: str, text: str) -> None:
        if self.active:
            self.writer.add_text(tag, text, step)

    def hparams(self, flat_config: dict[str, object]) -> None:
        if not self.active:
            return
        plain = {
            k: v if isinstance(v, int | float | str | bool) else str(v)
            for k, v in flat_config.items()
        }
        self.writer.add_hparams(plain, {}, name="hparams")

    def close(self) -> None:
        if self.active:
            self.writer.close()


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))


def read_metrics(workdir: str | Path, kind: str = "train") -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in records if r["kind"] == kind]


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{'train.learning_rate': 1e-4, ...} from a nested config dict."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
