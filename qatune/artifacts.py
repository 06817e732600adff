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

from qatune.errors import ModelError
from qatune.rundir import ensure_writable_dir, write_text_atomic  # noqa: F401 - re-exported

RUN_CONFIG = "qatune.yaml"


def write_json(path: Path, data: Any) -> None:
    """Atomic: a crash or a full disk never leaves a half-written JSON file in place of a good one."""
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False))


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


def base_model_of(run_cfg: dict[str, Any], run_dir: str | os.PathLike | None = None) -> str:
    """The run's base model, as recorded at training time: never what a relative path means from here.

    ``model`` is what the user typed; ``base_model_path`` is what it resolved to when the run was trained
    (absolute for a local folder). An alias resolves afresh (the embedded model's package may have moved);
    a local base model loads from its recorded absolute path only, so a different model that happens to
    sit at the same relative path under the current directory is never picked up.
    """
    from qatune.models import ALIASES

    name = str(run_cfg.get("model") or "")
    saved = str(run_cfg.get("base_model_path") or "")
    where = f"{Path(run_dir) / RUN_CONFIG}" if run_dir is not None else RUN_CONFIG
    if name in ALIASES:
        return name
    if saved and Path(saved).expanduser().is_absolute():
        if Path(saved).expanduser().exists():
            return saved
        raise ModelError(f"the run's base model {saved} (given as --model {name or saved} at training time, "
                         f"recorded in {where}) no longer exists; put the base model back at that path, or set "
                         "base_model_path in that file to where it is now")
    if saved:
        return saved  # a hub id
    if not name:
        raise ModelError(f"{where} names no base model ('model'); retrain into a new --output")
    return name  # a run of an older version that recorded no base_model_path


def missing_run_files(path: Path, peft: bool) -> list[str]:
    """The weight/config files a run needs that are not there (a partly deleted or copied run dir)."""
    if peft:
        needed = [("adapter_config.json",), ("adapter_model.safetensors", "adapter_model.bin")]
    else:
        needed = [("config.json",), ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")]
    needed.append(("tokenizer_config.json",))
    return [names[0] for names in needed if not any((path / n).is_file() for n in names)]


def load_trained_model(run_dir: str | os.PathLike, merge: bool = True, attention_dropout: float | None = 0.0
                       ) -> tuple[Any, Any, dict[str, Any]]:
    """Return ``(model, tokenizer, run_config)`` from a run dir; LoRA-style adapters merged when possible."""
    from qatune.methods import registry
    from qatune.models import load_model_for_task, load_tokenizer
    from qatune.tasks import get_task

    path = Path(run_dir)
    run_cfg = read_run_config(path)
    task = get_task(run_cfg.get("task", "extractive_qa"))
    method = registry.get(run_cfg.get("method", "full"))
    missing = missing_run_files(path, method.is_peft)
    if missing:
        raise ModelError(f"run directory {path} is incomplete: {', '.join(missing)} is missing (deleted or not "
                         "copied); restore it, or retrain with `qatune train --output DIR`")
    tokenizer = load_tokenizer(str(path))
    if not method.is_peft:
        model = load_model_for_task(str(path), task.auto_class, attention_dropout=attention_dropout,
                                    head_expected=True)
    else:
        from peft import PeftModel

        base_name = base_model_of(run_cfg, path)
        base = load_model_for_task(base_name, task.auto_class, attention_dropout=attention_dropout)
        try:
            model = PeftModel.from_pretrained(base, str(path))
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"adapter in {path} could not be loaded onto base model '{base_name}': {exc}") from None
        if merge and method.mergeable:
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer, run_cfg
