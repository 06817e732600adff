"""Extractive question answering (SQuAD v1.1 / v2.0): the first :class:`qatune.tasks.base.Task`.

The SQuAD schema, repairs and official metrics are shared with generative QA and live in
:mod:`qatune.data.squad`; here: windowed features, the span model, post-processing and the predictor. Importing
this package does not import torch.
"""

from qatune.data.squad.squad_schema import examples_to_squad_json, load_qa_examples, load_squad_dataset_json
from qatune.data.squad.squad_types import GoldAnswer, LoadReport, QAExample
from qatune.tasks.extractive_qa.task import ExtractiveQATask

__all__ = ["GoldAnswer", "ExtractiveQATask", "LoadReport", "QAExample", "examples_to_squad_json", "load_qa_examples",
           "load_squad_dataset_json"]
