"""Scoring decoded QA answers: official EM/F1, the SQuAD v2 no-answer threshold, the prediction files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from qatune.tasks.base import EvalResult
from qatune.tasks.extractive_qa.postprocess import final_answers, no_answer_probability
from qatune.tasks.extractive_qa.types import QAExample


@dataclass
class QAEvalResult:
    metrics: dict[str, Any]
    predictions: dict[str, str]
    na_probs: dict[str, float]
    null_threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def score_predictions(examples: Sequence[QAExample], decoded: Sequence[Any], version_2: bool,
                      null_threshold: float | None) -> QAEvalResult:
    """Official EM/F1 for the decoded answers; for v2, tune the no-answer threshold unless one is given.

    ``na_probs`` written for v2 are ``sigmoid(score_gap - threshold)``: above 0.5 means "no answer", and
    the official script run on predictions.json + na_probs.json reproduces metrics.json exactly.
    """
    from qatune.tasks.extractive_qa.squad import examples_to_squad_json
    from qatune.tasks.extractive_qa.squad_metrics import squad_v1_evaluate, squad_v2_evaluate

    dataset = examples_to_squad_json(list(examples), "2.0" if version_2 else "1.1")["data"]
    if not version_2:
        predictions, _ = final_answers(examples, decoded, version_2=False)
        return QAEvalResult(metrics=dict(squad_v1_evaluate(dataset, predictions)),
                            predictions=predictions, na_probs={})
    raw_preds = {ex.id: (d.best.text if d.best else "") for ex, d in zip(examples, decoded, strict=True)}
    gaps = {ex.id: (d.score_diff if np.isfinite(d.score_diff) else 1e6) for ex, d in zip(examples, decoded, strict=True)}
    tuned = False
    if null_threshold is None:
        best = squad_v2_evaluate(dataset, raw_preds, na_probs=gaps)
        null_threshold = float(best.get("best_f1_thresh", 0.0))
        tuned = True
        # The official search starts from "answer nothing" and keeps threshold 0.0 when nothing beats it;
        # on raw score gaps 0.0 would answer almost everything, so pick a threshold below every gap instead.
        no_answer_share = 100.0 * sum(1 for ex in examples if ex.is_impossible or not ex.answers) / len(examples)
        if gaps and best.get("best_f1", 0.0) <= no_answer_share + 1e-9:
            null_threshold = min(gaps.values()) - 1.0
    predictions, _ = final_answers(examples, decoded, version_2=True, null_threshold=null_threshold)
    na_probs = {qid: no_answer_probability(gap, null_threshold) for qid, gap in gaps.items()}
    metrics = dict(squad_v2_evaluate(dataset, predictions, na_probs=na_probs))
    metrics["exact_match"] = metrics["exact"]
    metrics["null_threshold"] = null_threshold
    metrics["null_threshold_tuned_on_eval"] = tuned
    return QAEvalResult(metrics=metrics, predictions=predictions, na_probs=na_probs,
                        null_threshold=null_threshold)


def eval_result(result: QAEvalResult, version_2: bool) -> EvalResult:
    """The generic result: metrics, the official prediction files, the threshold the run keeps."""
    files: dict[str, Any] = {"predictions.json": result.predictions}
    if version_2:
        files["na_probs.json"] = result.na_probs
    return EvalResult(metrics=result.metrics, files=files, record={"null_threshold": result.null_threshold})
