"""The run directory: what training writes and what ``qatune.load`` / evaluate / export read back.

The model files are the backend's (``Backend.save_run`` / ``load_run``); every run also holds
``qatune.yaml`` (the resolved config plus what loading needs), ``metrics.json``, ``history.json`` and
the task's evaluation files (e.g. ``predictions.json``). This module only reads and writes those files:
loading a model is :func:`qatune.inference.loader.load_run_model`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from qatune.core.jsonio import write_json  # noqa: F401 - run-dir writers import it from here
from qatune.errors import ModelError
from qatune.rundir import ensure_writable_dir, write_text_atomic  # noqa: F401 - re-exported

RUN_CONFIG = "qatune.yaml"




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
