"""Official SQuAD scoring of answers, however they were produced (extracted spans or generated text).

Given one answer text and one no-answer score gap per question, this is the whole v1.1 / v2.0 story:
official EM/F1, the v2 no-answer threshold tuned on the evaluation data (official ``best_f1_thresh``)
unless one is given, ``na_probs.json`` as ``sigmoid(gap - threshold)`` so the official script run on
``predictions.json`` + ``na_probs.json`` reproduces ``metrics.json``, and ``qatune score`` on files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from qatune.data.squad.squad_types import QAExample
from qatune.errors import DataError


@dataclass
class QAEvalResult:
    metrics: dict[str, Any]
    predictions: dict[str, str]
    na_probs: dict[str, float]
    null_threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def files(self, version_2: bool) -> dict[str, Any]:
        """The official prediction files: ``predictions.json``, and ``na_probs.json`` for v2."""
        out: dict[str, Any] = {"predictions.json": self.predictions}
        if version_2:
            out["na_probs.json"] = self.na_probs
        return out


def no_answer_probability(gap: float, threshold: float) -> float:
    """``sigmoid(gap - threshold)``: above 0.5 means "no answer" (gap: how much more the model believes
    in no answer than in its best answer, in log-odds-like units of the task's own scores).

    The one definition behind ``na_probs.json`` and the ``score`` of a no-answer prediction; a gap that
    is not finite (no answer candidate at all) is certain no-answer.
    """
    if not math.isfinite(gap):
        return 1.0
    return 1.0 / (1.0 + math.exp(-max(min(gap - threshold, 60.0), -60.0)))


def score_answers(examples: Sequence[QAExample], answers: dict[str, str], gaps: dict[str, float],
                  version_2: bool, null_threshold: float | None) -> QAEvalResult:
    """Official EM/F1 of one answer per question; for v2, tune the no-answer threshold unless one is given.

    ``gaps`` (question id -> no-answer score minus best-answer score; not finite = no answer at all) decide
    v2's empty answers: a question answers "" when its gap exceeds the threshold.
    """
    from qatune.data.squad.squad_metrics import squad_v1_evaluate, squad_v2_evaluate
    from qatune.data.squad.squad_schema import examples_to_squad_json

    dataset = examples_to_squad_json(list(examples), "2.0" if version_2 else "1.1")["data"]
    if not version_2:
        return QAEvalResult(metrics=dict(squad_v1_evaluate(dataset, answers)), predictions=dict(answers),
                            na_probs={})
    finite = {qid: (g if math.isfinite(g) else 1e6) for qid, g in gaps.items()}
    tuned = False
    if null_threshold is None:
        best = squad_v2_evaluate(dataset, answers, na_probs=finite)
        null_threshold = float(best.get("best_f1_thresh", 0.0))
        tuned = True
        # The official search starts from "answer nothing" and keeps threshold 0.0 when nothing beats it;
        # on raw score gaps 0.0 would answer almost everything, so pick a threshold below every gap instead.
        no_answer_share = 100.0 * sum(1 for ex in examples if ex.is_impossible or not ex.answers) / len(examples)
        if finite and best.get("best_f1", 0.0) <= no_answer_share + 1e-9:
            null_threshold = min(finite.values()) - 1.0
    predictions = {ex.id: ("" if finite[ex.id] > null_threshold else answers[ex.id]) for ex in examples}
    na_probs = {qid: no_answer_probability(gap, null_threshold) for qid, gap in finite.items()}
    metrics = dict(squad_v2_evaluate(dataset, predictions, na_probs=na_probs))
    metrics["exact_match"] = metrics["exact"]
    metrics["null_threshold"] = null_threshold
    metrics["null_threshold_tuned_on_eval"] = tuned
    return QAEvalResult(metrics=metrics, predictions=predictions, na_probs=na_probs, null_threshold=null_threshold)


# -- qatune score: the official metrics of prediction files ------------------------------------------

def _read_json_map(path: str, what: str) -> dict[str, Any]:
    """A JSON object file read through the shared safe parser, errors naming the file."""
    from qatune.data.jsonio import parse_json, unreadable

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file {p} does not exist")
    try:
        data = parse_json(p.read_text(encoding="utf-8"), f"{what} file {p}")
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} file {p} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise unreadable(f"{what} file {p}", exc) from None
    if not isinstance(data, dict):
        raise DataError(f"{what} file {p} must be a JSON object mapping question id -> value, "
                        f"got a {type(data).__name__}")
    return data


def read_predictions(path: str) -> dict[str, str]:
    """``{question_id: answer_text}``; any other value is a DataError naming the file and the id."""
    from qatune.data.jsonio import short_repr

    preds = _read_json_map(path, "predictions")
    for qid, value in preds.items():
        if not isinstance(value, str):
            raise DataError(f"predictions file {path}: answer for id {qid!r} is not a string (got "
                            f'{short_repr(value)}); give {{"question id": "answer text", ...}} ("" for no answer)')
    return preds


def read_na_probs(path: str) -> dict[str, float]:
    """``{question_id: no-answer probability}``: finite numbers only, so no ``Infinity`` reaches the output."""
    from qatune.data.jsonio import short_repr

    na_probs = _read_json_map(path, "na-probs")
    for qid, value in na_probs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"na-probs file {path}: value for id {qid!r} is {short_repr(value)}, not a number; "
                            "give a no-answer probability per question id")
        if not math.isfinite(value):
            raise DataError(f"na-probs file {path}: value for id {qid!r} is {value}, not a finite number; "
                            "give a no-answer probability (e.g. between 0 and 1) per question id")
    return na_probs


def score_files(data: str, predictions: str, na_probs: str | None = None, na_prob_thresh: float = 1.0,
                version: str | None = None) -> dict[str, Any]:
    """The official SQuAD metrics of a predictions file (and, for v2.0, a no-answer probabilities file)
    against the raw SQuAD JSON: the data file's declared version, else 2.0 when a question is unanswerable
    or no-answer probabilities are given."""
    from qatune.data.squad.squad_metrics import is_squad_v2, squad_v1_evaluate, squad_v2_evaluate
    from qatune.data.squad.squad_schema import load_squad_for_scoring
    from qatune.errors import ConfigError

    dataset, declared = load_squad_for_scoring(data)
    preds = read_predictions(predictions)
    probs = read_na_probs(na_probs) if na_probs else None
    if version is None and declared == "1.1" and probs is not None:
        raise ConfigError(f"--na-probs is for SQuAD v2.0 scoring, but {data} declares version 1.1 (every "
                          "question has an answer); drop --na-probs, or pass --version 2.0 to use v2.0 rules")
    version = version or declared or ("2.0" if is_squad_v2(dataset) or probs is not None else "1.1")
    if version == "1.1":
        return dict(squad_v1_evaluate(dataset, preds))
    return dict(squad_v2_evaluate(dataset, preds, na_probs=probs, na_prob_thresh=na_prob_thresh,
                                  na_probs_source=na_probs))
