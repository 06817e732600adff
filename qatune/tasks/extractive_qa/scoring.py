"""Scoring decoded QA spans: the best span and its no-answer gap per question, then the shared official
SQuAD scoring (:mod:`qatune.data.squad.squad_scoring`: EM/F1, the v2 threshold, the prediction files)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from qatune.data.squad.squad_scoring import QAEvalResult, score_answers
from qatune.data.squad.squad_types import QAExample
from qatune.tasks.base import EvalResult


def score_predictions(examples: Sequence[QAExample], decoded: Sequence[Any], version_2: bool,
                      null_threshold: float | None) -> QAEvalResult:
    """Official EM/F1 for the decoded answers; for v2, tune the no-answer threshold unless one is given.

    ``na_probs`` written for v2 are ``sigmoid(score_gap - threshold)``: above 0.5 means "no answer", and
    the official script run on predictions.json + na_probs.json reproduces metrics.json exactly.
    """
    answers = {ex.id: (d.best.text if d.best else "") for ex, d in zip(examples, decoded, strict=True)}
    gaps = {ex.id: (float(d.score_diff) if np.isfinite(d.score_diff) else 1e6)
            for ex, d in zip(examples, decoded, strict=True)}
    return score_answers(examples, answers, gaps, version_2, null_threshold)


def eval_result(result: QAEvalResult, version_2: bool) -> EvalResult:
    """The generic result: metrics, the official prediction files, the threshold the run keeps."""
    return EvalResult(metrics=result.metrics, files=result.files(version_2), record={"null_threshold": result.null_threshold})
