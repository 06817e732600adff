"""A comparison's output layout, shared by the runner (writes it) and the report (reads it back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qatune.artifacts import RUN_CONFIG

PLAN_FILE = "compare.json"  # OUTPUT/compare.json: the spec as run (order, shared settings, per-method configs)
STATUS_FILE = "compare_status.json"  # OUTPUT/<label>/compare_status.json: status, error, wall time, measurements
TRAIN_YAML = "compare_train.yaml"  # OUTPUT/<label>/compare_train.yaml: the generated `qatune train` config
LOG_FILE = "train.log"  # OUTPUT/<label>/train.log: the subprocess's stdout + stderr


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_finished(run_dir: Path) -> bool:
    """Training finished: the trainer writes metrics.json last, after the weights and qatune.yaml."""
    return (run_dir / "metrics.json").is_file() and (run_dir / RUN_CONFIG).is_file()
