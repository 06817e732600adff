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
        raise ModelError(f"run directory {path} does not exist")
    if not cfg_file.is_file():
        raise ModelError(f"{path} is not a qatune run directory (no {RUN_CONFIG}); pass the --output "
                         "directory of `qatune train`, or a Hugging Face model dir with --model")
    return yaml.safe_load(cfg_file.read_text()) or {}


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
        model = load_model_for_task(str(path), task.auto_class, attention_dropout=attention_dropout)
    else:
        from peft import PeftModel

        base = load_model_for_task(run_cfg["model"], task.auto_class, attention_dropout=attention_dropout)
        try:
            model = PeftModel.from_pretrained(base, str(path))
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"adapter in {path} could not be loaded onto base model '{run_cfg['model']}': {exc}") from None
        if merge and method.mergeable:
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer, run_cfg
