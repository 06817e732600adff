"""Task registry: each task knows its options, data, features, loss, evaluation and predictor; the
loop, evaluation, inference, serving, export and compare are shared and reach tasks only through
:class:`qatune.tasks.base.Task` and this registry.

A new task registers itself (from its own package or from user code, e.g. a test)::

    from qatune.tasks import register_task
    register_task("digits", DigitTask)
"""

from __future__ import annotations

from typing import Any, Callable

from qatune.core.registry import Registry
from qatune.tasks.base import (
    EvalResult,
    ExportSignature,
    ExtraInput,
    ModelSpec,
    OneWindowPerExample,
    Predictor,
    ReportColumn,
    ReportSpec,
    Task,
)

__all__ = ["EvalResult", "ExportSignature", "ExtraInput", "ModelSpec", "OneWindowPerExample", "Predictor", "ReportColumn",
           "ReportSpec", "Task", "get_task", "register_task", "task_names", "unregister_task"]

DEFAULT_TASK = "extractive_qa"
_tasks: Registry[Task] = Registry("task")


def _extractive_qa() -> Task:
    from qatune.tasks.extractive_qa import ExtractiveQATask  # torch-free import: heavy parts load lazily

    return ExtractiveQATask()


_tasks.register("extractive_qa", _extractive_qa, aliases=("qa",))


def _classification() -> Task:
    from qatune.tasks.classification import ClassificationTask

    return ClassificationTask()


_tasks.register("classification", _classification, aliases=("classify",))


def _generative_qa() -> Task:
    from qatune.tasks.generative_qa import GenerativeQATask  # torch-free import: heavy parts load lazily

    return GenerativeQATask()


_tasks.register("generative_qa", _generative_qa, aliases=("generative",))


def register_task(name: str, factory: Callable[[], Any], aliases: tuple[str, ...] = (), replace: bool = False) -> None:
    """Register a task under ``name`` (what ``task:`` in a config names); ``factory()`` builds it."""
    _tasks.register(name, factory, aliases, replace=replace)


def unregister_task(name: str) -> None:
    _tasks.unregister(name)


def task_names() -> list[str]:
    return _tasks.names()


def get_task(name: str | None = None) -> Task:
    """The registered task ``name`` (default: extractive QA); an unknown name lists the available ones."""
    return _tasks.get(name or DEFAULT_TASK)


def canonical_task_name(name: str) -> str:
    return _tasks.canonical(name)
