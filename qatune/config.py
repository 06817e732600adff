"""Run configuration: one dataclass tree, loadable from YAML, overridable with ``a.b=value`` pairs.

Why dataclasses and not dicts: unknown keys and wrong types are caught at load time with a message
naming the key, instead of failing deep inside training.

Layout: generic training keys at the top level, then one section per task (``qa: {doc_stride: 128}``),
per backend (``hf: {trust_remote_code: false}``) and per method (``lora: {r: 8}``). A task's or
backend's options may also be given at the top level, as before sections existed (``doc_stride: 64``,
``--doc-stride 64``): they are moved into their section.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qatune.core.options import coerce, convert, field_kind, section_values, type_error
from qatune.errors import ConfigError
from qatune.ranges import Range
from qatune.runtime import check_device


@dataclass
class TrainConfig:
    """Everything a training run needs. ``method_options`` holds the per-method section (e.g. ``lora:``)."""

    model: str = "minilm"
    method: str = "lora"
    task: str = "extractive_qa"
    backend: str = "hf"
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
    precision: str = "auto"  # auto | bf16 | fp32
    attention_dropout: float | None = 0.0  # 0 lets SDPA use its fused kernel; None keeps the model's value
    hidden_dropout: float | None = None  # the encoder's hidden-state dropout; None keeps the model's (BERT: 0.1)
    group_by_length: bool = True
    do_eval: bool = True
    keep_best: bool = False  # the run keeps the weights of the epoch with the lowest validation loss
    save_steps: int = 0  # 0: checkpoint at each epoch end only
    stop_after_steps: int | None = None  # stop resumably after N optimizer steps (job time slots)
    resume: bool = False
    overwrite: bool = False  # replace a finished run in the output dir
    tracking: bool | list[str] = True  # true (MLflow), false, or trackers: [mlflow, tensorboard]
    tracking_uri: str | None = None  # default: sqlite mlflow.db beside the output dir
    register_model: str | None = None  # MLflow Model Registry name: each run becomes a new version
    experiment: str = "qatune"
    run_name: str | None = None
    cache_dir: str | None = None
    num_threads: int | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    debug: bool = False
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's section, resolved (all its keys)
    backend_options: dict[str, Any] = field(default_factory=dict)  # the backend's section, resolved

    def options_for(self, method: str) -> dict[str, Any]:
        return dict(self.method_options.get(method, {}))

    def task_config(self) -> Any:
        """The task's options object (e.g. ``QAOptions``)."""
        from qatune.tasks import get_task

        return get_task(self.task).options_type(**self.task_options)

    def backend_config(self) -> Any:
        from qatune.backends import get_backend

        return get_backend(self.backend).options_type(**self.backend_options)

    def __getattr__(self, name: str) -> Any:
        """Read access to task/backend options by their flat name (``cfg.doc_stride``), as before sections."""
        if name.startswith("_") or name in ("task_options", "backend_options"):
            raise AttributeError(name)
        for section in (self.__dict__.get("task_options") or {}, self.__dict__.get("backend_options") or {}):
            if name in section:
                return section[name]
        raise AttributeError(f"'TrainConfig' has no attribute '{name}'")


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _type_error(key: str, value: Any, kind: str) -> ConfigError:
    return type_error(key, value, kind)


def _convert(key: str, value: Any, kind: str) -> Any:
    return convert(key, value, kind)


def _field_kind(key: str) -> tuple[str | None, bool]:
    return field_kind(_FIELDS[key])


def _coerce(key: str, value: Any, default: Any = None) -> Any:
    """Coerce YAML/CLI values to the field's type, with a message naming the key."""
    return coerce(_FIELDS[key], key, value, getattr(TrainConfig, key, None))


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str], example: str = "epochs=2 or lora.r=16",
                    verbatim_under: str | None = None) -> dict[str, Any]:
    """Apply ``key=value`` / ``section.key=value`` overrides (values parsed as YAML scalars).

    ``verbatim_under``: the name after this top-level section keeps its hyphens (compare's method labels:
    ``methods.lora-last4.learning_rate=1e-3``)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. {example})")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-")
        parts = key.split(".")
        parts = [p if (i == 1 and parts[0] == verbatim_under) else p.replace("-", "_") for i, p in enumerate(parts)]
        key = ".".join(parts)
        if not all(parts):
            raise ConfigError(f"override '{item}': '{key}' is not a valid key (e.g. {example})")
        node = out
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        if len(parts) == 1 and parts[0] in _FIELDS and _field_kind(parts[0])[0] == "str":
            # text fields keep the text as typed: YAML would turn run_name=0x10 into 16, experiment=yes into True
            node[parts[0]] = None if value.strip() in ("", "null", "~") else value
        else:
            node[parts[-1]] = _parse_scalar(value)
    return out


def _section_fields(options_type: type) -> set[str]:
    return {f.name for f in dataclasses.fields(options_type)}


def _split_section(raw: dict[str, Any], section: str, options_type: type, source: str) -> dict[str, Any]:
    """Pop the ``section:`` mapping and the section's flat keys (``doc_stride: 64``) from ``raw``; a key
    given both ways with different values is refused, naming both spellings."""
    names = _section_fields(options_type)
    given = raw.pop(section, None)
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"{source}: section '{section}' must be a mapping of options, got {given!r}")
    values = section_values(options_type, given, section, source)
    for key in [k for k in raw if k.replace("-", "_") in names]:
        norm = key.replace("-", "_")
        value = _coerce_flat(options_type, norm, raw.pop(key))
        if norm in values and values[norm] != value:
            raise ConfigError(f"{source}: '{norm}' is given twice, as '{key}' and as '{section}.{norm}'; "
                              f"keep '{section}.{norm}'")
        values[norm] = value
    return values


def _coerce_flat(options_type: type, name: str, value: Any) -> Any:
    """A section option given at the top level: checked under its flat name, as before sections."""
    field_ = next(f for f in dataclasses.fields(options_type) if f.name == name)
    return coerce(field_, name, value, getattr(options_type(), name))


def config_from_dict(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a TrainConfig from generic keys, the task's and backend's sections (or their flat keys) and
    method sections (``lora: {r: 8}``)."""
    from qatune.backends import get_backend
    from qatune.methods import registry  # late: methods import torch/peft lazily
    from qatune.tasks import canonical_task_name, get_task

    raw = {str(k): v for k, v in raw.items()}
    task_name = str(raw.get("task") or TrainConfig.task)
    task = get_task(task_name)
    backend = get_backend(str(raw.get("backend") or TrainConfig.backend))
    # a TrainConfig's own fields (dataclasses.asdict round trip): the sections as resolved, under the section names
    for key, section in (("task_options", task.section), ("backend_options", backend.name)):
        resolved = raw.pop(key, None)
        if isinstance(resolved, dict) and resolved:
            given = raw.get(section)
            raw[section] = {**resolved, **(given if isinstance(given, dict) else {})}
    task_values = _split_section(raw, task.section, task.options_type, source)
    backend_values = _split_section(raw, backend.name, backend.options_type, source)
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
            known = ", ".join(sorted(k for k in _FIELDS if not k.endswith("_options")))
            raise ConfigError(f"{source}: unknown key '{key}'. Known keys: {known}; a task or backend section "
                              f"('{task.section}:', '{backend.name}:') or a method section such as 'lora:' "
                              f"(one of {', '.join(registry.names())}).")
    for name, options in method_options.items():
        method_options[name] = _method_section(name, options, source)
    kwargs["task"] = canonical_task_name(task_name)
    cfg = TrainConfig(**kwargs, method_options=method_options, backend_options=backend_values)
    validate(cfg)
    options = task.resolve_options(task_values, {"max_seq_length": cfg.max_seq_length}, source)
    cfg.task_options = dataclasses.asdict(options)
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


# the numeric settings and what makes sense for each; None (unset) always passes. The task's and the
# backend's sections check their own (e.g. qatune/tasks/extractive_qa/options.py).
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
    "max_seq_length": Range(1, why="tokens per window"),
    "attention_dropout": Range(0, 1, high_open=True, why="a dropout probability"),
    "hidden_dropout": Range(0, 1, high_open=True, why="a dropout probability"),
    "save_steps": Range(0, why="checkpoint every N optimizer steps; 0 = at epoch ends only"),
    "stop_after_steps": Range(1, why="optimizer steps before a resumable stop"),
    "max_train_samples": Range(1, why="the first N training questions"),
    "max_eval_samples": Range(1, why="the first N evaluation questions"),
    "num_threads": Range(1, why="CPU threads for PyTorch"),
}


def validate(cfg: TrainConfig) -> None:
    """Every generic value in its allowed range, with a one-line ConfigError naming the key, value and
    range; the task checks its own section (``Task.resolve_options``)."""
    from qatune.methods import registry

    registry.get(cfg.method)  # raises a ConfigError listing the methods
    for name in ("model", "output", "task"):
        if not getattr(cfg, name):
            raise ConfigError(f"config key '{name}' must not be empty")
    for name, allowed in RANGES.items():
        allowed.check(name, getattr(cfg, name))
    check_device(cfg.device)
    _check_tracking(cfg)
    if cfg.precision not in {"auto", "bf16", "fp32"}:
        raise ConfigError(f"precision must be auto, bf16 or fp32, got '{cfg.precision}'")


def _check_tracking(cfg: TrainConfig) -> None:
    """``tracking``: a bool stays a bool; names become a checked list (none: false). A tracker whose package
    is missing is refused here, not after the training."""
    import importlib.util

    from qatune.tracking import TRACKERS, tracking_backends

    try:
        names = tracking_backends(cfg.tracking)
    except ValueError as exc:
        raise ConfigError(f"config key 'tracking': {exc}") from None
    if not isinstance(cfg.tracking, bool):
        cfg.tracking = names or False
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"config key 'tracking': {name} is not installed (pip install {name}), or leave it "
                              f"out of tracking (trackers: {', '.join(TRACKERS)})")
    if cfg.register_model is not None and not cfg.register_model.strip():
        raise ConfigError("config key 'register_model' must not be empty: a Model Registry name such as squad-lora")
    if cfg.register_model and "mlflow" not in names:
        raise ConfigError(f"config key 'register_model' ({cfg.register_model}) registers the run in MLflow's Model "
                          "Registry, but MLflow tracking is off; drop --no-tracking or add mlflow to tracking")


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
        if isinstance(value, dict) and value:  # a section's flags (--doc-stride -> qa:): merged, and they win
            given = raw.get(key)
            section = dict(given) if isinstance(given, dict) else {}
            for name in value:
                raw.pop(name, None)  # the file's flat spelling of the same option (doc_stride: 128)
                section.pop(name.replace("_", "-"), None)
            raw[key] = {**section, **value}
        elif value is not None:
            raw[key] = value
    raw = apply_overrides(raw, overrides or [])
    _flat_overrides_win(raw, overrides or [])
    return config_from_dict(raw, source=str(path) if path else "config")


def _flat_overrides_win(raw: dict[str, Any], overrides: list[str]) -> None:
    """A flat ``key=value`` override of a task/backend option (``doc_stride=64``) wins over the file's
    section (``qa: {doc_stride: 128}``), as it did over the file's flat key before sections existed."""
    from qatune.backends import get_backend
    from qatune.tasks import get_task

    flat = {item.split("=", 1)[0].strip().lstrip("-").replace("-", "_") for item in overrides if "=" in item}
    flat = {key for key in flat if "." not in key and key in raw}
    if not flat:
        return
    try:
        sections = (get_task(str(raw.get("task") or TrainConfig.task)).section,
                    get_backend(str(raw.get("backend") or TrainConfig.backend)).name)
    except ConfigError:
        return  # config_from_dict names the unknown task or backend
    for name in sections:
        section = raw.get(name)
        if isinstance(section, dict):
            raw[name] = {k: v for k, v in section.items() if str(k).replace("-", "_") not in flat}


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config as plain YAML-able data: task, backend and method sections at the top level
    (``qa:``, ``hf:``, ``lora:``), as a YAML config spells them."""
    from qatune.tasks import get_task

    data = dataclasses.asdict(cfg)
    methods = data.pop("method_options")
    data[get_task(cfg.task).section] = data.pop("task_options")
    data[cfg.backend] = data.pop("backend_options")
    data.update(methods)
    return data


def save_config(cfg: TrainConfig, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    data = config_to_dict(cfg)
    if extra:
        data.update(extra)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
