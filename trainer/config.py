"""Typed configuration: dataclasses for every key, from TOML plus `--set KEY=VALUE` overrides.

Key names follow the original project's configs (see DESIGN.md). Unknown keys are errors with the
closest valid key suggested; values are checked for type and range on load, and every message names
the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import tomli_w

from quad_doctor.trainer.errors import ConfigError

NUM_CLASSES = 6
MODALITIES = ("video", "audio", "sensor", "text")
SAMPLERS = ("stratified", "random", "sequential")
LR_SCHEDULERS = ("cosine_warmup", "constant")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class SyntheticConfig:
    """The generator's knobs; the last four make faulty data on purpose."""

    num_samples: int = 1500
    seed: int = 0
    class_weights: list[float] = field(default_factory=list)
    label_noise: float = 0.0
    nan_fraction: float = 0.0
    dead_modality: str = ""


@dataclass
class DataConfig:
    """Where the data comes from: a dataset directory, or the embedded synthetic default."""

    path: str = ""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class EncoderConfig:
    """One modality's encoder: a backbone, then a linear head; either can be frozen."""

    freeze_backbone: bool = False
    freeze_head: bool = False


@dataclass
class TextEncoderConfig(EncoderConfig):
    """The text encoder; token ids must be below `vocab_size`."""

    vocab_size: int = 1000


@dataclass
class FusionConfig:
    """The fusion MLP that maps the four encodings to one embedding."""

    dim: int = 512
    layer_norm: bool = True
    l2_normalize: bool = True
    freeze: bool = False


@dataclass
class ModelConfig:
    """The quadmodal model."""

    video: EncoderConfig = field(default_factory=EncoderConfig)
    audio: EncoderConfig = field(default_factory=EncoderConfig)
    sensor: EncoderConfig = field(default_factory=EncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)


@dataclass
class TrainConfig:
    """Optimisation, schedule and sampling."""

    batch_size: int = 32
    num_epochs: int = 30
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine_warmup"
    warmup_epochs: int = 10
    warmup_start_lr: float = 1e-7
    min_lr: float = 1e-6
    sampler: str = "stratified"
    temperature: float = 0.07
    seed: int = 0
    device: str = "auto"
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    checkpoint_every_steps: int = 0
    amp: bool = True  # bfloat16 autocast for forward and loss on CUDA; no effect on CPU


@dataclass
class DistConfig:
    """Distributed training."""

    nproc_per_node: int = 1
    gather_features: bool = True


@dataclass
class Config:
    """The whole resolved configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts, as written to TOML."""
        return dataclasses.asdict(self)


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config dataclass, in declaration order."""
    keys: list[str] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(valid_keys(hints[f.name], key + "."))
        else:
            keys.append(key)
    return keys


def parse_override(text: str) -> tuple[str, Any]:
    """Split `KEY=VALUE`; VALUE is read as a TOML value, or as a plain string when it is not one."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.batch_size=64")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # `--set train.sampler=sequential` reads as the string it obviously is
    return key, value


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Resolve a config from an optional TOML file and `--set` overrides (later ones win)."""
    tree: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        for key in _leaf_keys(tree):
            origin[key] = str(path)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        origin[key] = "--set"
    return _build(Config, tree, "", origin)


def patched_config(config: Config, patch: dict[str, Any], where: str = "config_patch") -> Config:
    """A new config: `config` with dotted keys set to new values, validated like `--set`."""
    tree = config.to_dict()
    origin: dict[str, str] = {}
    for key, value in patch.items():
        _set_dotted(tree, key, value)
        origin[key] = where
    return _build(Config, tree, "", origin)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as TOML; `load_config` reads it back to equal values."""
    Path(path).write_text(tomli_w.dumps(config.to_dict()), encoding="utf-8")


def _leaf_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for name, value in tree.items():
        if isinstance(value, dict):
            keys.extend(_leaf_keys(value, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parents[: i + 1])} is a value, not a table")
        node = child
    node[leaf] = value


def _unknown_key(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'{hint}")


def _build(cls: type, tree: Any, prefix: str, origin: dict[str, str]) -> Any:
    where = origin.get(prefix.rstrip("."), "config")
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.')} must be a table, got {tree!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in tree:
        if name not in names:
            key = f"{prefix}{name}"
            leaf = next((k for k in origin if k == key or k.startswith(key + ".")), key)
            raise _unknown_key(leaf, origin.get(leaf, "config"))
    values = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], value, key + ".", origin)
        else:
            values[name] = _coerce(value, hints[name], key, origin.get(key, "config"))
    built = cls(**values)
    _validate(built, prefix, origin)
    return built


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: expected {expected}, got {value!r}")

    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if get_origin(hint) is list and get_args(hint) == (float,):
        if not isinstance(value, list):
            raise bad("a list of numbers")
        return [_coerce(item, float, key, where) for item in value]
    raise TypeError(f"config field {key} has unsupported type {hint}")  # a bug, not bad input


def _validate(section: Any, prefix: str, origin: dict[str, str]) -> None:
    """Range checks for one section; each failure names the key and where its value came from."""

    def check(name: str, ok: bool, requirement: str) -> None:
        if not ok:
            key = f"{prefix}{name}"
            value = getattr(section, name)
            raise ConfigError(f"{origin.get(key, 'config')}: {key} {requirement}, got {value!r}")

    def one_of(name: str, choices: tuple[str, ...]) -> None:
        check(name, getattr(section, name) in choices, "must be one of " + ", ".join(choices))

    if isinstance(section, SyntheticConfig):
        check(
            "num_samples", section.num_samples >= 4 * NUM_CLASSES, f"must be >= {4 * NUM_CLASSES}"
        )
        weights = section.class_weights
        check(
            "class_weights",
            not weights or (len(weights) == NUM_CLASSES and min(weights) >= 0 and sum(weights) > 0),
            f"must be empty or {NUM_CLASSES} non-negative numbers, not all zero",
        )
        check("label_noise", 0.0 <= section.label_noise <= 1.0, "must be in [0, 1]")
        check("nan_fraction", 0.0 <= section.nan_fraction <= 1.0, "must be in [0, 1]")
        one_of("dead_modality", ("", *MODALITIES))
    elif isinstance(section, TextEncoderConfig):
        check("vocab_size", section.vocab_size >= 2, "must be >= 2")
    elif isinstance(section, FusionConfig):
        check("dim", section.dim >= 2, "must be >= 2")
    elif isinstance(section, TrainConfig):
        check("batch_size", section.batch_size >= 2, "must be >= 2")
        check("num_epochs", section.num_epochs >= 1, "must be >= 1")
        check("learning_rate", section.learning_rate > 0, "must be > 0")
        check("warmup_start_lr", section.warmup_start_lr > 0, "must be > 0")
        check("min_lr", section.min_lr > 0, "must be > 0")
        check("warmup_epochs", section.warmup_epochs >= 0, "must be >= 0")
        check("temperature", section.temperature > 0, "must be > 0")
        check("weight_decay", section.weight_decay >= 0, "must be >= 0")
        check("checkpoint_every_steps", section.checkpoint_every_steps >= 0, "must be >= 0")
        one_of("lr_scheduler", LR_SCHEDULERS)
        one_of("sampler", SAMPLERS)
        one_of("device", DEVICES)
        one_of("optimizer", OPTIMIZERS)
    elif isinstance(section, DistConfig):
        check("nproc_per_node", section.nproc_per_node >= 1, "must be >= 1")
