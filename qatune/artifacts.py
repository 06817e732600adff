"""The run directory: what training writes and what ``qatune.load`` / evaluate / export read back.

A full fine-tuning run is a standard Hugging Face model dir; a PEFT run is a standard PEFT adapter dir.
Both also hold ``qatune.yaml`` (the resolved config plus what loading needs), ``metrics.json``,
``history.json`` and the predictions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from qatune.errors import ModelError, OutputError

RUN_CONFIG = "qatune.yaml"


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and prove it is writable before any expensive work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".qatune-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output directory {path} is not writable ({exc.strerror or exc}); "
                          "choose another --output") from None
    return path


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir)
    cfg_file = path / RUN_CONFIG
    if not path.exists():
        raise ModelError(f"run directory {path} does not exist; pass a directory written by "
                         "`qatune train --output DIR`")
    if not cfg_file.is_file():
        raise ModelError(f"{path} is not a qatune run directory (no {RUN_CONFIG}); pass a directory written "
                         "by `qatune train --output DIR`. To fine-tune a Hugging Face model dir, use "
                         "`qatune train --model DIR`")
    try:
        data = yaml.safe_load(cfg_file.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelError(f"{cfg_file} is damaged (not valid YAML: {exc}); retrain into a new --output") from None
    if not isinstance(data, dict):
        raise ModelError(f"{cfg_file} is damaged (not a mapping of keys to values); retrain into a new --output")
    return data


def base_model_of(run_cfg: dict[str, Any]) -> str:
    """The run's base model: its ``model`` (alias, hub id or a path valid from here), else the absolute
    ``base_model_path`` recorded at training time (a relative ``--model`` path from another directory)."""
    from qatune.models import ALIASES

    name = str(run_cfg.get("model") or "")
    saved = run_cfg.get("base_model_path")
    if name in ALIASES or (name and Path(name).expanduser().exists()):
        return name
    if saved and Path(str(saved)).expanduser().exists():
        return str(saved)
    if not name:
        raise ModelError("the run's qatune.yaml names no base model ('model'); retrain into a new --output")
    return name


def load_trained_model(run_dir: str | os.PathLike, merge: bool = True, attention_dropout: float | None = 0.0
                       ) -> tuple[Any, Any, dict[str, Any]]:
    """Return ``(model, tokenizer, run_config)`` from a run dir; LoRA-style adapters merged when possible."""
    from qatune.methods import registry
    from qatune.models import load_model_for_task, load_tokenizer
    from qatune.tasks import get_task

    path = Path(run_dir)
    run_cfg = read_run_config(path)
    task = get_task(run_cfg.get("task", "extractive_qa"))
    tokenizer = load_tokenizer(str(path))
    method = registry.get(run_cfg.get("method", "full"))
    if not method.is_peft:
        model = load_model_for_task(str(path), task.auto_class, attention_dropout=attention_dropout,
                                    head_expected=True)
    else:
        from peft import PeftModel

        base_name = base_model_of(run_cfg)
        base = load_model_for_task(base_name, task.auto_class, attention_dropout=attention_dropout)
        try:
            model = PeftModel.from_pretrained(base, str(path))
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"adapter in {path} could not be loaded onto base model '{base_name}': {exc}") from None
        if merge and method.mergeable:
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer, run_cfg
