"""Generative question answering with decoder LMs (SQuAD v1.1 / v2.0): answers written, not extracted.

Prompts and their templates (``prompts``), the answer-only loss and batched KV-cache generation
(``generation``), the predictor (``predictor``) and the task contract (``task``). SQuAD reading and the
official scoring are shared with extractive QA through :mod:`qatune.data.squad`. Importing this package
does not import torch. See docs/generative.md.
"""

from qatune.tasks.generative_qa.task import GenerativeQATask

__all__ = ["GenerativeQATask"]
