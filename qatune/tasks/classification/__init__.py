"""Text classification with optional tabular columns (``task: classification`` / ``classify``)."""

from qatune.tasks.classification.task import ClassificationTask

__all__ = ["ClassificationTask"]
