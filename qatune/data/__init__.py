"""QA data: the in-memory records and the loader that reads every supported format into them."""

from qatune.data.readers import examples_to_squad_json, load_qa_examples, load_squad_dataset_json
from qatune.tasks.extractive_qa.types import Answer, LoadReport, QAExample

__all__ = [
    "Answer",
    "LoadReport",
    "QAExample",
    "examples_to_squad_json",
    "load_qa_examples",
    "load_squad_dataset_json",
]
