"""Extractive question answering (SQuAD v1.1 / v2.0): the first :class:`qatune.tasks.base.Task`.

Everything SQuAD lives here: the schema and repairs of its data (``squad``), the official metrics
(``squad_metrics``), windowed features, the span model, post-processing and the predictor. Importing
this package does not import torch.
"""

from qatune.tasks.extractive_qa.squad import examples_to_squad_json, load_qa_examples, load_squad_dataset_json
from qatune.tasks.extractive_qa.task import ExtractiveQATask
from qatune.tasks.extractive_qa.types import GoldAnswer, LoadReport, QAExample

__all__ = ["GoldAnswer", "ExtractiveQATask", "LoadReport", "QAExample", "examples_to_squad_json", "load_qa_examples",
           "load_squad_dataset_json"]
