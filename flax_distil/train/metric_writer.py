"""Run metrics: TensorBoard event files and a `metrics.jsonl` log, written by process 0 only.

Everything goes into one TensorBoard run (`WORKDIR/tensorboard`): scalars, each with a
description that names its unit (the units of `metrics.json`: WER a fraction, MFU a fraction,
times in seconds); sample transcripts as text; and the hyperparameters with the metrics they
are judged by (eval WER and loss per set, train loss), so TensorBoard's HPARAMS tab shows them
side by side. `metrics.jsonl` has one line per logged step (train scalars) or eval; a resumed run
first cuts the lines after the restored step, so the file always tells one uninterrupted
history. The workdir may be a `gs://` URL (an `etils.epath` path): tensorboardX writes event
files there itself, and `metrics.jsonl` is rewritten whole at each record (object stores cannot
append; the file is small).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
from etils import epath

from flax_distil.metrics import json_safe

DESCRIPTIONS = {
    "loss": "training objective per label token: ce_weight * ce + kl_weight * T^2 * kl (nats)",
    "ce": "cross-entropy of the student on the pseudo-labels, per label token (nats)",
    "kl": "KL(teacher || student) per label token at temperature T, before the T^2 factor "
    "the objective applies (nats)",
    "grad_norm": "global L2 norm of the gradient, before clipping",
    "param_norm": "global L2 norm of the trainable parameters",
    "learning_rate": "learning rate of this step (the schedule's value)",
    "step_time": "wall time per step, averaged since the last log (seconds)",
    "samples_per_second": "examples per second over the global batch",
    "tokens_per_second": "label tokens (loss-weighted) per second over the global batch",
    "mfu": "model FLOPs utilisation: counted FLOPs per second over the device peak (a fraction)",
    "skipped_steps": "steps whose loss or gradient was not finite, so far (a running count)",
    "wer": "word error rate of greedy transcripts, Whisper-normalised (a fraction: 0.05 = 5%)",
}
_SKIPPED = "examples skipped so far because of {reason} (a running count)"


def describe(name: str) -> str:
    """The description, with its unit, that a scalar named `name` carries in TensorBoard."""
    if name.startswith("skipped_") and name != "skipped_steps":
        return _SKIPPED.format(reason=name.removeprefix("skipped_").replace("_", " "))
    return DESCRIPTIONS.get(name, "")


class MetricWriter:
    def __init__(self, workdir: str | Path, resume_step: int = 0):
        self.active = jax.process_index() == 0
        self.log_path = epath.Path(workdir) / "metrics.jsonl"
        self.writer, self.lines = None, []
        if not self.active:
            return
        from tensorboardX import SummaryWriter

        self.lines = _lines_until(self.log_path, resume_step)
        self.log_path.write_text("".join(self.lines))
        tensorboard = str(epath.Path(workdir) / "tensorboard")
        self.writer = SummaryWriter(tensorboard, purge_step=resume_step + 1)

    def scalars(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        if not self.active:
            return
        for name, value in values.items():
            description = (
                describe(name)
                if kind == "train"
                else describe(name).replace("per label token", "per label token of the eval set")
            )
            self.writer.add_scalar(f"{kind}/{name}", value, step, summary_description=description)
        record = {"step": step, "kind": kind, **json_safe({k: float(v) for k, v in values.items()})}
        self.lines.append(json.dumps(record) + "\n")
        self.log_path.write_text("".join(self.lines))

    def text(self, step: int, tag: str, text: str) -> None:
        """Markdown text under `tag` exactly (tensorboardX's add_text appends '/text_summary')."""
        if not self.active:
            return
        from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboardX.proto.tensor_pb2 import TensorProto
        from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        tensor = TensorProto(
            dtype="DT_STRING",
            string_val=[text.encode()],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        summary = Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])
        self.writer.file_writer.add_summary(summary, step)

    def hparams(self, settings: dict[str, object], metric_tags: list[str]) -> None:
        """The run's settings beside the scalars they are judged by (`metric_tags`)."""
        if not self.active:
            return
        from tensorboardX.summary import hparams

        values = {name: _hparam_value(value) for name, value in settings.items()}
        experiment, start, _ = hparams(values, dict.fromkeys(metric_tags))
        for summary in (experiment, start):
            self.writer.file_writer.add_summary(summary)

    def close(self) -> None:
        if self.active:
            self.writer.close()


def _hparam_value(value):
    """A setting as TensorBoard shows it well: TensorBoard keeps numbers as doubles and shows
    them with decimals ("20.000"), so integers go as their text; lists of sources as compact
    JSON (the keys that are set); floats and booleans as they are."""
    if isinstance(value, bool | float) or value is None:
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        entries = [
            {k: v for k, v in entry.items() if v is not None} if isinstance(entry, dict) else entry
            for entry in value
        ]
        return json.dumps(entries, separators=(",", ":"))
    return str(value)


def _lines_until(path: epath.Path, step: int) -> list[str]:
    """The log's lines up to `step` (a resumed run cuts what came after its checkpoint)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [line + "\n" for line in lines if json.loads(line)["step"] <= step]


def read_metrics(workdir: str | Path, kind: str = "train") -> list[dict]:
    path = epath.Path(workdir) / "metrics.jsonl"
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
