"""Training configuration: typed sections, YAML files with one `base:` level, `key=value` overrides.

    config = load_config("configs/tiny_en_demo.yaml", ["train.num_steps=50", "loss.kl_weight=0"])

`configs/base.yaml` documents every key with its default (the defaults below); an experiment file
names `base: base.yaml` and overrides a few keys. Unknown sections or keys and invalid values are
one-line errors naming the key, raised before any model loads: every field is checked against
its type hint (`Literal` for choices), and data sources become typed `SourceSpec`s here, so a
misspelled source key or an unknown source kind stops `train` (and `--dry-run`) at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from flax_distil.data.labels import LabelSpec
from flax_distil.data.sources import SourceSpec
from flax_distil.errors import FlaxDistilError
from flax_distil.train.augment import SpecAugment


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    teacher: str = "pypi:tiny.en"
    student: str | None = None  # None: made from the teacher with student_decoder_layers
    student_decoder_layers: int = 2
    freeze_encoder: bool = True
    freeze_token_embeddings: bool = False  # the student's token embedding = output projection
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # parameters stay float32
    remat_decoder: bool = False
    remat_encoder: bool = False
    dropout: float = 0.0  # residual dropout in the student decoder


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train: tuple[SourceSpec, ...] = ()  # from {kind, path, text_column, weight, ...} mappings
    eval: tuple[SourceSpec, ...] = ()  # the same; `name` (default: the path's last part) in logs
    # When a mixed epoch ends: at the first source that runs out, or once every source ran out
    # (the others restarting with a fresh permutation); see flax_distil.data.mixing.
    stopping_strategy: Literal["first_exhausted", "all_exhausted"] = "first_exhausted"
    language: str | None = "en"  # decoder prompt language (multilingual teachers)
    max_label_length: int = 128
    label_bucket: int = 0  # 0: labels padded to max_label_length; k: to the batch's longest, in k's
    length_groups: int = 1  # batches read together and sorted by label length
    timestamp_probability: float = 0.5  # labels with timestamps keep them this often
    condition_on_prev_probability: float = 0.0  # prompt with the previous text this often
    spec_augment: SpecAugment = dataclasses.field(default_factory=SpecAugment)  # in training
    long_labels: Literal["drop", "truncate"] = "drop"
    features_on: Literal["device", "host"] = "device"  # where the log-mel is computed
    cache_encoder_outputs: bool = False  # keep the frozen encoder's outputs in host memory
    min_seconds: float = 0.0
    max_seconds: float = 30.0
    max_skip_ratio: float = 0.5
    prefetch: int = 2
    num_workers: int = 0  # processes decoding audio (0: in the batch thread)
    seed: int = 0

    def label_spec(self) -> LabelSpec:
        """How training examples become prompts and labels (checks the probabilities)."""
        return LabelSpec(
            max_label_length=self.max_label_length,
            long_labels=self.long_labels,
            timestamp_probability=self.timestamp_probability,
            condition_on_prev_probability=self.condition_on_prev_probability,
            language=self.language,
            seed=self.seed,
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    num_steps: int = 1000
    batch_size: int = 32  # global, over all devices and hosts
    microbatches: int = 1  # gradient accumulation inside the step
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # after warmup
    weight_decay: float = 0.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    on_nan: Literal["stop", "skip"] = "stop"
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class LossConfig:
    ce_weight: float = 0.8
    kl_weight: float = 1.0
    temperature: float = 2.0


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1: every device not used by fsdp
    fsdp: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500
    keep: int = 3
    keep_best: bool = False  # also keep the checkpoint with the best eval WER
    async_save: bool = True
    atomicity: Literal["auto", "commit_file", "atomic_rename"] = "auto"  # commit_file: gcsfuse
    preemption_check_every: int = 10  # steps between the hosts' SIGTERM agreement (multi-host)
    compilation_cache: str | None = "compilation_cache"  # in the workdir unless absolute; null: off


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every: int = 500  # 0: only at the end
    batch_size: int = 16
    max_examples: int = 256  # per eval set
    max_new_tokens: int = 128
    num_samples_logged: int = 4


@dataclasses.dataclass(frozen=True)
class LogConfig:
    every: int = 10
    peak_flops: float = 0.0  # one device's FLOP/s; 0: measure a large matmul at start-up


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    loss: LossConfig = LossConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = typing.get_type_hints(Config)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _number(where: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, str):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads 3e-4 (no dot) as a string
            value = float(value)
    allowed = (int, float) if kind is float else kind
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise FlaxDistilError(f"{where}: expected {kind.__name__}, got {value!r}")
    return kind(value)


def _checked(where: str, value: Any, hint: Any) -> Any:
    """`value` checked against a field's type hint: numbers, strings, booleans, optionals,
    `Literal` choices, dataclasses (from mappings) and tuples of them."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _checked(where, value, inner)
    if origin is typing.Literal:
        if value not in args:
            raise FlaxDistilError(f"{where}={value!r}: choose one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise FlaxDistilError(f"{where}: expected a list, got {value!r}")
        return tuple(_checked(f"{where}[{i}]", item, args[0]) for i, item in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _dataclass(where, hint, value)
    if hint in (int, float):
        return _number(where, value, hint)
    if not isinstance(value, hint):
        raise FlaxDistilError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _dataclass(where: str, cls, value: Any):
    """An instance of `cls` from a mapping whose keys are its fields, each checked."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise FlaxDistilError(
            f"{where}: expected a mapping of {cls.__name__} fields, got {value!r}"
        )
    hints = _hints(cls)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        known = ", ".join(hints)
        raise FlaxDistilError(f"{where}: unknown key {unknown[0]!r}; {where} takes {known}")
    checked = {key: _checked(f"{where}.{key}", item, hints[key]) for key, item in value.items()}
    try:
        return cls(**checked)
    except (TypeError, FlaxDistilError) as error:  # a missing field, or the class's own checks
        raise FlaxDistilError(f"{where}: {error}") from None


def _merge(base: dict, update: dict, origin: str) -> dict:
    merged = {name: dict(base.get(name, {})) for name in SECTIONS}
    for section, values in update.items():
        if section not in SECTIONS:
            raise FlaxDistilError(
                f"{origin}: unknown section {section!r}; sections are {', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise FlaxDistilError(f"{origin}: section {section!r} must be a mapping")
        fields = set(_hints(SECTIONS[section]))
        for key, value in values.items():
            if key not in fields:
                known = ", ".join(sorted(fields))
                raise FlaxDistilError(
                    f"{origin}: unknown key {section}.{key}; {section} has {known}"
                )
            merged[section][key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FlaxDistilError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise FlaxDistilError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise FlaxDistilError(f"{path}: a config file must be a mapping of sections")
    return data


def _file_values(path: Path) -> dict:
    data = _read_yaml(path)
    base = data.pop("base", None)
    values: dict = {}
    if base is not None:
        base_data = _read_yaml(path.parent / base)
        if "base" in base_data:
            raise FlaxDistilError(f"{path.parent / base}: a base file cannot name a base itself")
        values = _merge({}, base_data, str(path.parent / base))
    return _merge(values, data, str(path))


def parse_override(text: str) -> dict:
    """`section.key=value` (value parsed as YAML) as {section: {key: value}}."""
    name, separator, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not separator or not dot or not key:
        raise FlaxDistilError(f"override {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return {section: {key: value}}


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The validated config of a YAML file (or the defaults) with `key=value` overrides."""
    values = _file_values(Path(path)) if path else _merge({}, {}, "defaults")
    for override in overrides:
        values = _merge(values, parse_override(override), "command line")
    return from_dict(values)


def from_dict(values: dict) -> Config:
    """The validated config of {section: {key: value}} (as read from YAML)."""
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        known = ", ".join(SECTIONS)
        raise FlaxDistilError(f"unknown section {unknown[0]!r}; sections are {known}")
    values = {**values, "data": dict(values.get("data", {}))}
    for key in ("train", "eval"):
        if isinstance(values["data"].get(key), list | tuple):
            values["data"][key] = [_named(entry) for entry in values["data"][key]]
    sections = {name: _dataclass(name, cls, values.get(name, {})) for name, cls in SECTIONS.items()}
    names = [spec.name for spec in sections["data"].eval]
    twins = sorted({name for name in names if names.count(name) > 1})
    if twins:
        raise FlaxDistilError(f"data.eval: two sources named {twins[0]!r}; give each a name")
    config = Config(**sections)
    validate(config)
    return config


def _named(entry):
    """A source entry with a name: by default the last part of its path (logs use it)."""
    if isinstance(entry, dict) and not entry.get("name") and entry.get("path"):
        return {**entry, "name": Path(str(entry["path"])).name or str(entry["path"])}
    return entry


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise FlaxDistilError(message)


def validate(config: Config) -> None:
    """Cross-field checks, each failure one line naming the key and the fix."""
    train, loss = config.train, config.loss
    _require(train.num_steps >= 1, "train.num_steps must be at least 1")
    _require(train.batch_size >= 1, "train.batch_size must be at least 1")
    _require(train.microbatches >= 1, "train.microbatches must be at least 1")
    _require(
        train.batch_size % train.microbatches == 0,
        f"train.batch_size={train.batch_size} must be divisible by "
        f"train.microbatches={train.microbatches}",
    )
    _require(train.learning_rate > 0, "train.learning_rate must be positive")
    _require(train.warmup_steps >= 0, "train.warmup_steps must be >= 0")
    _require(train.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0 disables clipping)")
    _require(loss.temperature > 0, "loss.temperature must be positive")
    _require(
        loss.ce_weight >= 0 and loss.kl_weight >= 0 and loss.ce_weight + loss.kl_weight > 0,
        "loss.ce_weight and loss.kl_weight must be >= 0 and not both 0",
    )
    _require(0.0 <= config.model.dropout < 1.0, "model.dropout must be in [0, 1)")
    _require(config.model.student_decoder_layers >= 1, "model.student_decoder_layers must be >= 1")
    _require(config.mesh.fsdp >= 1, "mesh.fsdp must be >= 1")
    _require(config.mesh.data >= 1 or config.mesh.data == -1, "mesh.data must be >= 1 or -1")
    _require(config.checkpoint.every >= 1, "checkpoint.every must be >= 1")
    _require(config.checkpoint.keep >= 1, "checkpoint.keep must be >= 1")
    _require(
        config.checkpoint.preemption_check_every >= 1,
        "checkpoint.preemption_check_every must be >= 1",
    )
    _require(config.eval.every >= 0, "eval.every must be >= 0")
    _require(config.log.every >= 1, "log.every must be >= 1")
    _require(config.data.max_label_length >= 8, "data.max_label_length must be at least 8")
    _require(config.data.label_bucket >= 0, "data.label_bucket must be >= 0 (0: no buckets)")
    _require(config.data.length_groups >= 1, "data.length_groups must be >= 1")
    _require(config.data.num_workers >= 0, "data.num_workers must be >= 0 (0: no workers)")
    config.data.label_spec()  # its own checks: the probabilities in [0, 1]
    _require(
        not (config.data.spec_augment.enabled and config.data.cache_encoder_outputs),
        "data.spec_augment masks the encoder's input anew every step: it cannot be combined "
        "with data.cache_encoder_outputs (set one of them to false)",
    )


def dump_yaml(config: Config) -> str:
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return yaml.safe_dump(plain(config.to_dict()), sort_keys=False)
