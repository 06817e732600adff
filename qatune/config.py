"""Run configuration: one dataclass tree, loadable from YAML, overridable with ``a.b=value`` pairs.

Why dataclasses and not dicts: unknown keys and wrong types are caught at load time with a message
naming the key, instead of failing deep inside training.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qatune.errors import ConfigError
from qatune.ranges import Range
from qatune.runtime import check_device


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
    doc_stride: int = 128  # not given and max_seq_length too short for it: see _auto_doc_stride
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
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    trust_remote_code: bool = False
    debug: bool = False
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def options_for(self, method: str) -> dict[str, Any]:
        return dict(self.method_options.get(method, {}))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _type_error(key: str, value: Any, kind: str) -> ConfigError:
    return ConfigError(f"config key '{key}': {value!r} is not a valid {kind}")


def _convert(key: str, value: Any, kind: str) -> Any:
    """``value`` as ``kind`` (bool, int, float or str); bools are never numbers, 2.5 is never an int."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in {"true", "1", "yes", "on"}:
            return True
        if str(value).lower() in {"false", "0", "no", "off"}:
            return False
        raise _type_error(key, value, "bool (true or false)")
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _type_error(key, value, kind)
        try:
            number = float(value)
        except ValueError:
            raise _type_error(key, value, kind) from None
        if kind == "float":
            if not math.isfinite(number):
                raise _type_error(key, value, "finite number")
            return number
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise _type_error(key, value, kind) from None
        if not number.is_integer():
            raise _type_error(key, value, kind)
        return int(number)
    if kind == "str":
        if isinstance(value, (dict, list)):
            raise _type_error(key, value, "string")
        return str(value)
    return value


def _field_kind(key: str) -> tuple[str | None, bool]:
    """(bool/int/float/str or None, optional) from the field's annotation, e.g. 'int | None' -> ('int', True)."""
    annotation = str(_FIELDS[key].type)
    optional = "None" in annotation
    base = annotation.replace(" | None", "").strip()
    return (base if base in ("bool", "int", "float", "str") else None), optional


def _coerce(key: str, value: Any, default: Any = None) -> Any:
    """Coerce YAML/CLI values to the field's type, with a message naming the key."""
    kind, optional = _field_kind(key)
    if value is None:
        if optional or kind is None:
            return None
        raise ConfigError(f"config key '{key}' needs a value (a {kind}); remove the key to use the default "
                          f"({getattr(TrainConfig, key, None)!r})")
    return _convert(key, value, kind) if kind else value


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
        if not all(parts):
            raise ConfigError(f"override '{item}': '{key}' is not a valid key (e.g. epochs=2 or lora.r=16)")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        if len(parts) == 1 and parts[0] in _FIELDS and _field_kind(parts[0])[0] == "str":
            # text fields keep the text as typed: YAML would turn run_name=0x10 into 16, experiment=yes into True
            node[parts[0]] = None if value.strip() in ("", "null", "~") else value
        else:
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
        elif isinstance(value, dict) and norm in registry.names():
            method_options.setdefault(norm, {}).update(value)
        else:
            known = ", ".join(sorted(k for k in _FIELDS if k != "method_options"))
            raise ConfigError(f"{source}: unknown key '{key}'. Known keys: {known}; or a method section "
                              f"such as 'lora:' (one of {', '.join(registry.names())}).")
    for name, options in method_options.items():
        method_options[name] = _method_section(name, options, source)
    if "doc_stride" not in kwargs and "max_seq_length" in kwargs:
        kwargs["doc_stride"] = _auto_doc_stride(kwargs["max_seq_length"], defaults.doc_stride)
    cfg = TrainConfig(**kwargs, method_options=method_options)
    validate(cfg)
    return cfg


# option -> accepted kind, for options whose default (None) does not tell
_OPTION_KINDS = {"layers": "int", "target_modules": "modules", "feedforward_modules": "modules"}


def _method_section(name: str, options: Any, source: str) -> dict[str, Any]:
    """Check a method section (``lora: {r: 16}``): known method, known options, right types."""
    from qatune.methods import registry

    if name not in registry.names():
        raise ConfigError(f"{source}: unknown method section '{name}:'; methods are {', '.join(registry.names())}")
    if not isinstance(options, dict):
        raise ConfigError(f"{source}: method section '{name}' must be a mapping of options, got {options!r}")
    method = registry.get(name)
    out: dict[str, Any] = {}
    for opt, value in options.items():
        key = f"{name}.{opt}"
        if opt not in method.defaults and name != "peft":
            known = ", ".join(sorted(method.defaults)) or "none"
            raise ConfigError(f"{source}: unknown option '{key}'. Options of method '{name}': {known}")
        default = method.defaults.get(opt)
        kind = _OPTION_KINDS.get(opt) or (type(default).__name__ if default is not None else None)
        if value is None or kind is None or name == "peft":
            out[opt] = value
        elif kind == "modules":
            ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            if not ok:
                raise _type_error(key, value, "module name or list of module names (e.g. [query, value])")
            out[opt] = value
        else:
            out[opt] = _convert(key, value, kind)
            if opt in method.ranges:
                method.ranges[opt].check(key, out[opt])
    return out


# special tokens a question/context pair adds: 3 for BERT ([CLS] q [SEP] c [SEP]), 4 for RoBERTa
_PAIR_SPECIAL_TOKENS = 4


def _max_doc_stride(max_seq_length: int) -> int:
    """Largest stride a window can have: besides the overlap it needs the special tokens, at least one
    question token and one new context token (the tokenizer aborts with a Rust panic otherwise)."""
    return max_seq_length - _PAIR_SPECIAL_TOKENS - 2


def _auto_doc_stride(max_seq_length: Any, default: int) -> Any:
    """The documented default (128) where it leaves room for a full 64-token question, else a quarter of
    the window (128 -> 32), so ``max_seq_length=128`` alone just works."""
    from qatune.tasks.qa.features import MAX_QUERY_TOKENS

    if not isinstance(max_seq_length, int) or default + MAX_QUERY_TOKENS + _PAIR_SPECIAL_TOKENS < max_seq_length:
        return default
    return max(0, min(default, max_seq_length // 4, _max_doc_stride(max_seq_length)))


# the numeric settings and what makes sense for each; None (unset) always passes
RANGES: dict[str, Range] = {
    "epochs": Range(1, why="passes over the training data"),
    "batch_size": Range(1, why="windows per training step and process"),
    "eval_batch_size": Range(1, why="windows per evaluation forward pass"),
    "grad_accum": Range(1, why="batches accumulated per optimizer step"),
    "learning_rate": Range(0, low_open=True, why="the peak learning rate, e.g. 2e-3 for LoRA, 1e-4 for full"),
    "weight_decay": Range(0, why="AdamW weight decay, e.g. 0.01"),
    "warmup_ratio": Range(0, 1, why="the fraction of optimizer steps spent warming up, e.g. 0.1"),
    "max_grad_norm": Range(0, low_open=True, why="the gradient clipping norm; 0 would zero every update"),
    "seed": Range(0, 2**31 - 1, why="the random seed"),
    "max_seq_length": Range(_PAIR_SPECIAL_TOKENS + 2,
                            why="tokens per window: special tokens, question and context must fit"),
    "n_best": Range(1, why="start/end candidates kept per window"),
    "max_answer_length": Range(1, why="the longest answer in tokens"),
    "attention_dropout": Range(0, 1, high_open=True, why="a dropout probability"),
    "save_steps": Range(0, why="checkpoint every N optimizer steps; 0 = at epoch ends only"),
    "stop_after_steps": Range(1, why="optimizer steps before a resumable stop"),
    "max_train_samples": Range(1, why="the first N training questions"),
    "max_eval_samples": Range(1, why="the first N evaluation questions"),
    "num_threads": Range(1, why="CPU threads for PyTorch"),
}


def validate(cfg: TrainConfig) -> None:
    """Every value in its allowed range, with a one-line ConfigError naming the key, value and range."""
    from qatune.methods import registry

    registry.get(cfg.method)  # raises a ConfigError listing the methods
    for name in ("model", "output", "task"):
        if not getattr(cfg, name):
            raise ConfigError(f"config key '{name}' must not be empty")
    for name, allowed in RANGES.items():
        allowed.check(name, getattr(cfg, name))
    if cfg.null_threshold is not None and not math.isfinite(cfg.null_threshold):
        raise ConfigError(f"config key 'null_threshold': {cfg.null_threshold!r} is not a finite number")
    check_device(cfg.device)
    limit = _max_doc_stride(cfg.max_seq_length)  # >= 0: max_seq_length is in range
    if not 0 <= cfg.doc_stride <= limit:
        raise ConfigError(f"doc_stride must be in [0, {limit}] for max_seq_length={cfg.max_seq_length} (each "
                          f"window needs special tokens, the question and new context beyond the overlap), got "
                          f"{cfg.doc_stride}; lower doc_stride (e.g. doc_stride={cfg.max_seq_length // 4}) or "
                          "raise max_seq_length")
    if cfg.precision not in {"auto", "bf16", "fp32"}:
        raise ConfigError(f"precision must be auto, bf16 or fp32, got '{cfg.precision}'")


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config file's top-level mapping, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values")
    return loaded


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) < ``base`` (CLI flags) < dotted overrides."""
    raw: dict[str, Any] = read_yaml_mapping(path) if path is not None else {}
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
