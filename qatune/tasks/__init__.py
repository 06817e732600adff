"""Task registry: each task knows its data, features, loss and evaluation; the trainer is shared."""

from __future__ import annotations

from typing import Any

from qatune.errors import ConfigError


def get_task(name: str) -> Any:
    if name in ("extractive_qa", "qa"):
        from qatune.tasks.extractive_qa.task import ExtractiveQATask

        return ExtractiveQATask()
    raise ConfigError(f"unknown task '{name}'. Available: extractive_qa")
