"""Run configuration: one dataclass tree, loadable from YAML, overridable with ``a.b=value`` pairs.

Why dataclasses and not dicts: unknown keys and wrong types are caught at load time with a message
naming the key, instead of failing deep inside training.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qatune.errors import ConfigError


@dataclass
class TrainConfig:
    """Everything a training run needs. ``method_options`` holds the per-method section (e.g. ``lora:``)."""

    model: str = "minilm"
    method: str = "lora"
    task: str = "extractive_qa"
    train: str | None = None
    eval: str | None = None
    output: str = "runs/qatune"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    epochs: int = 1
    batch_size: int = 16
    eval_batch_size: int = 64
    learning_rate: float | None = None  # None: the method's documented default
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    seed: int = 42
    max_seq_length: int = 384
    doc_stride: int = 128
    n_best: int = 20
    max_answer_length: int = 30
    precision: str = "auto"  # auto | bf16 | fp32
    attention_dropout: float | None = 0.0  # 0 lets SDPA use its fused kernel; None keeps the model's value
    group_by_length: bool = True
    do_eval: bool = True
    null_threshold: float | None = None  # SQuAD v2: None tunes it on the eval set
    version_2: bool | None = None  # None: detect from the data
    save_steps: int = 0  # 0: checkpoint at each epoch end only
    stop_after_steps: int | None = None  # stop resumably after N optimizer steps (job time slots)
    resume: bool = False
    overwrite: bool = False  # replace a finished run in the output dir
    tracking: bool = True
    tracking_uri: str | None = None  # default: sqlite mlflow.db beside the output dir
    experiment: str = "qatune"
    run_name: str | None = None
    cache_dir: str | None = None
    num_threads: int | None = None
    device: str = "auto"  # auto | cpu | cuda
    trust_remote_code: bool = False
    debug: bool = False
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def options_for(self, method: str) -> dict[str, Any]:
        return dict(self.method_options.get(method, {}))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Coerce YAML/CLI values to the field's type, with a message naming the key."""
    if value is None:
        return None
    want = type(default) if default is not None else None
    annotation = str(_FIELDS[key].type)
    try:
        if "bool" in annotation and not isinstance(value, bool):
            if str(value).lower() in {"true", "1", "yes", "on"}:
                return True
            if str(value).lower() in {"false", "0", "no", "off"}:
                return False
            raise ValueError(value)
        if isinstance(value, bool):
            return value
        if want is int or annotation.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if want is float or annotation.startswith("float"):
            return float(value)
        if want is str or annotation.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config key '{key}': {value!r} is not a valid {annotation.replace(' | None', '')}"
        ) from None
    return value


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` / ``section.key=value`` overrides (values parsed as YAML scalars)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. epochs=2 or lora.r=16)")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = _parse_scalar(value)
    return out


def config_from_dict(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a TrainConfig; any unknown top-level mapping is a method section (``lora: {r: 8}``)."""
    from qatune.methods import registry  # late: methods import torch/peft lazily

    kwargs: dict[str, Any] = {}
    method_options: dict[str, dict[str, Any]] = dict(raw.get("method_options") or {})
    defaults = TrainConfig()
    for key, value in raw.items():
        norm = key.replace("-", "_")
        if norm == "method_options":
            continue
        if norm in _FIELDS:
            kwargs[norm] = _coerce(norm, value, getattr(defaults, norm))
        elif isinstance(value, dict):
            method_options.setdefault(norm, {}).update(value)
        else:
            known = ", ".join(sorted(_FIELDS))
            raise ConfigError(f"{source}: unknown key '{key}'. Known keys: {known}, or a method section "
                              f"such as 'lora:' ({', '.join(registry.names())}).")
    cfg = TrainConfig(**kwargs, method_options=method_options)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    from qatune.methods import registry

    registry.get(cfg.method)  # raises a ConfigError listing the methods
    if cfg.epochs <= 0:
        raise ConfigError(f"epochs must be > 0, got {cfg.epochs}")
    for name in ("batch_size", "eval_batch_size", "grad_accum", "max_seq_length", "n_best", "max_answer_length"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not 0 <= cfg.doc_stride < cfg.max_seq_length:
        raise ConfigError(f"doc_stride must be in [0, max_seq_length), got {cfg.doc_stride}")
    if cfg.precision not in {"auto", "bf16", "fp32"}:
        raise ConfigError(f"precision must be auto, bf16 or fp32, got '{cfg.precision}'")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) < ``base`` (CLI flags) < dotted overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of keys to values")
        raw.update(loaded)
    for key, value in (base or {}).items():
        if value is not None:
            raw[key] = value
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source=str(path) if path else "config")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config as plain YAML-able data: method sections flattened back to top level."""
    data = dataclasses.asdict(cfg)
    sections = data.pop("method_options")
    data.update(sections)
    return data


def save_config(cfg: TrainConfig, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    data = config_to_dict(cfg)
    if extra:
        data.update(extra)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
