"""Extractive QA as a qatune task: data, features, loss and evaluation in one place.

The trainer is task-agnostic; it asks the task for batches, a loss and an evaluation. A new task
(sequence classification, generative QA) implements the same methods and registers itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from qatune.data.types import QAExample
from qatune.tasks.qa.features import QAFeatures, build_features, collate, length_grouped_batches
from qatune.tasks.qa.modeling import QASpanModel, span_loss
from qatune.tasks.qa.postprocess import decode, final_answers


@dataclass
class QAEvalResult:
    metrics: dict[str, Any]
    predictions: dict[str, str]
    na_probs: dict[str, float]
    null_threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 60.0), -60.0)))


def score_predictions(examples: Sequence[QAExample], decoded: Sequence[Any], version_2: bool,
                      null_threshold: float | None) -> QAEvalResult:
    """Official EM/F1 for the decoded answers; for v2, tune the no-answer threshold unless one is given.

    ``na_probs`` written for v2 are ``sigmoid(score_gap - threshold)``: above 0.5 means "no answer", and
    the official script run on predictions.json + na_probs.json reproduces metrics.json exactly.
    """
    from qatune.data.squad import examples_to_squad_json
    from qatune.evaluation.squad_metrics import squad_v1_evaluate, squad_v2_evaluate

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
    na_probs = {qid: _sigmoid(gap - null_threshold) for qid, gap in gaps.items()}
    metrics = dict(squad_v2_evaluate(dataset, predictions, na_probs=na_probs))
    metrics["exact_match"] = metrics["exact"]
    metrics["null_threshold"] = null_threshold
    metrics["null_threshold_tuned_on_eval"] = tuned
    return QAEvalResult(metrics=metrics, predictions=predictions, na_probs=na_probs,
                        null_threshold=null_threshold)


def check_window_fits(tokenizer: Any, cfg: Any) -> None:
    """``max_seq_length`` plus the virtual tokens of prompt/P-tuning must fit the model's positions (the
    tokenizer's ``model_max_length``); past it, training dies with a tensor size mismatch at the first long
    window, possibly mid-epoch. Tokenizers that do not know their limit are not checked."""
    from qatune.errors import ConfigError
    from qatune.methods import registry

    limit = getattr(tokenizer, "model_max_length", None)
    if not isinstance(limit, int) or limit > 1_000_000:  # unset: transformers' VERY_LARGE_INTEGER
        return
    method, _ = registry.resolve(cfg.method)
    virtual = 0
    if method.takes_positions:
        virtual = int(registry.options(cfg.method, cfg.options_for(method.name)).get("num_virtual_tokens") or 0)
    if cfg.max_seq_length + virtual > limit:
        plus = f" + {virtual} virtual tokens of {method.name}" if virtual else ""
        raise ConfigError(f"config key 'max_seq_length': {cfg.max_seq_length}{plus} is more than the {limit} "
                          f"positions model {cfg.model} has; use max_seq_length <= {limit - virtual}"
                          + (f" or fewer {method.name}.num_virtual_tokens" if virtual else ""))


class ExtractiveQATask:
    name = "extractive_qa"
    auto_class = "AutoModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"

    def load(self, source: str, max_samples: int | None, split: str | None = None):
        from qatune.data.squad import load_qa_examples

        return load_qa_examples(source, max_samples=max_samples, split=split)

    def features(self, examples: Sequence[QAExample], tokenizer: Any, cfg: Any, progress: bool = True
                 ) -> QAFeatures:
        check_window_fits(tokenizer, cfg)
        return build_features(examples, tokenizer, cfg.max_seq_length, cfg.doc_stride, training=True,
                              cache_dir=cfg.cache_dir, progress=progress)

    def wrap(self, model: Any) -> QASpanModel:
        return QASpanModel(model)

    def train_batches(self, features: QAFeatures, batch_size: int, seed: int, group: bool) -> list[list[int]]:
        return length_grouped_batches(features.lengths, batch_size, seed, group)

    def collate(self, features: QAFeatures, indices: Sequence[int], tokenizer: Any) -> dict[str, Any]:
        return collate(features, indices, tokenizer.pad_token_id, with_labels=True)

    def loss(self, span_model: QASpanModel, batch: dict[str, Any]) -> Any:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        start, end = span_model(**inputs)
        return span_loss(start, end, batch["start_positions"], batch["end_positions"])

    def evaluate(self, span_model: QASpanModel, tokenizer: Any, examples: Sequence[QAExample],
                 features: QAFeatures, *, version_2: bool, batch_size: int, device: Any, precision: str,
                 n_best: int = 20, max_answer_length: int = 30, null_threshold: float | None = None,
                 progress: bool = True) -> QAEvalResult:
        from qatune.tasks.qa.inference import predict_logits

        t0 = time.perf_counter()
        starts, ends, loss = predict_logits(span_model, features, tokenizer.pad_token_id, batch_size, device,
                                            precision, progress=progress, with_loss=True)
        decoded = decode(examples, features, starts, ends, n_best=n_best, max_answer_length=max_answer_length)
        result = score_predictions(examples, decoded, version_2, null_threshold)
        if loss is not None:
            result.metrics["eval_loss"] = loss
        result.metrics["eval_questions"] = len(examples)
        result.metrics["eval_time_s"] = round(time.perf_counter() - t0, 3)
        return result
