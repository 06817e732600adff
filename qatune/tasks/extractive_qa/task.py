"""Extractive QA as a qatune task: the full :class:`qatune.tasks.base.Task` contract in one place.

The trainer, evaluation, inference loader, server, exporter and compare are task-agnostic; they ask the
task for options, data, batches, a loss, an evaluation, a predictor and a report. A new task
(sequence classification, generative QA) implements the same contract and registers itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qatune.data.squad.squad_task import SquadTaskMixin
from qatune.data.squad.squad_types import QAExample
from qatune.tasks.base import EvalResult, ExportSignature, ModelSpec, ReportColumn, ReportSpec
from qatune.tasks.extractive_qa.features import QAFeatures, build_features, collate, length_grouped_batches
from qatune.tasks.extractive_qa.options import QAOptions, resolve_options
from qatune.tasks.extractive_qa.postprocess import decode
from qatune.tasks.extractive_qa.scoring import QAEvalResult, eval_result, score_predictions  # noqa: F401 - API


def _pct(v: float) -> str:
    return f"{v:.1f}"


class ExtractiveQATask(SquadTaskMixin):
    name = "extractive_qa"
    section = "qa"
    options_type = QAOptions
    model = ModelSpec(head="question_answering", needs_offsets=True)
    export_signature = ExportSignature(inputs=("input_ids", "attention_mask", "token_type_ids"),
                                       outputs=("start_logits", "end_logits"),
                                       output_axes={"start_logits": ("batch", "sequence"),
                                                    "end_logits": ("batch", "sequence")})
    run_files = ("predictions.json", "na_probs.json")
    # options that change evaluation only: free to change between a checkpoint and --resume
    eval_only_options = frozenset({"n_best", "max_answer_length", "null_threshold", "version_2"})
    report = ReportSpec(
        columns=(ReportColumn("exact_match", "EM (%)", _pct), ReportColumn("f1", "F1 (%)", _pct)),
        primary="f1",
        optional=(ReportColumn("HasAns_f1", "HasAns F1 (%)", _pct), ReportColumn("NoAns_f1", "NoAns F1 (%)", _pct)),
        metric_note="EM/F1: SQuAD exact match and token F1 (%) on the evaluation set after the last epoch",
        optional_note="HasAns/NoAns F1 split answerable and unanswerable questions (SQuAD v2)",
        loss_note="Losses: mean of the start- and end-position cross-entropy (nats); val loss on the evaluation set.",
    )
    data_kind = "squad"  # SQuAD question/context/answers files: shared with the other QA task
    sample_data = str(Path(__file__).resolve().parents[2] / "resources" / "sample" / "dev.json")
    request_fields = {"question": "the question (non-empty string)",
                      "context": "the text that holds the answer (non-empty string, any length)"}
    route = "answer"  # POST /v1/answer
    zero_shot = False  # a base model's fresh span head answers at random: train first
    # every `qatune predict --input` output line has these besides "id" (how --overwrite knows our files)
    response_keys = frozenset({"answer", "score", "start", "end", "no_answer"})
    # v2 follows the *evaluation* data: training is the same either way (unanswerable questions are labelled
    # at [CLS]); v2 switches on no-answer decoding, which must match the data being scored (training data
    # decides only when there is no evaluation data)
    squad_version_from = "eval"

    # -- options and data -----------------------------------------------------------------------------
    def resolve_options(self, options: dict[str, Any], context: dict[str, Any], source: str) -> QAOptions:
        return resolve_options(options, int(context.get("max_seq_length", 384)))

    load = SquadTaskMixin.read  # the name before the Task contract

    # -- training ------------------------------------------------------------------------------------
    def features(self, examples: Sequence[QAExample], tokenizer: Any, options: Any, max_seq_length: int | None = None,
                 training: bool = True, cache_dir: str | None = None, progress: bool = True,
                 use_cache: bool = True) -> QAFeatures:
        """Windows with labels (``training``: also for the eval loss), cached on disk unless ``use_cache`` is off."""
        if max_seq_length is None:  # the call before the Task contract: features(examples, tokenizer, cfg)
            max_seq_length, cache_dir = options.max_seq_length, options.cache_dir
        return build_features(examples, tokenizer, max_seq_length, options.doc_stride, training=training,
                              cache_dir=cache_dir, use_cache=use_cache, progress=progress)

    def wrap(self, model: Any) -> Any:
        from qatune.tasks.extractive_qa.modeling import QASpanModel

        return QASpanModel(model)

    def train_batches(self, features: QAFeatures, batch_size: int, seed: int, group: bool) -> list[list[int]]:
        return length_grouped_batches(features.lengths, batch_size, seed, group)

    def collate(self, features: QAFeatures, indices: Sequence[int], tokenizer: Any) -> dict[str, Any]:
        return collate(features, indices, tokenizer.pad_token_id, with_labels=True)

    def loss(self, span_model: Any, batch: dict[str, Any]) -> Any:
        from qatune.tasks.extractive_qa.modeling import INPUT_KEYS, span_loss

        inputs = {k: batch[k] for k in INPUT_KEYS if k in batch}
        start, end = span_model(**inputs)
        return span_loss(start, end, batch["start_positions"], batch["end_positions"])

    def evaluate(self, span_model: Any, tokenizer: Any, examples: Sequence[QAExample], features: QAFeatures,
                 options: QAOptions, *, batch_size: int, device: Any, precision: str, progress: bool = True
                 ) -> EvalResult:
        from qatune.tasks.extractive_qa.inference import predict_logits

        t0 = time.perf_counter()
        starts, ends, loss = predict_logits(span_model, features, tokenizer.pad_token_id, batch_size, device,
                                            precision, progress=progress, with_loss=True)
        decoded = decode(examples, features, starts, ends, n_best=options.n_best,
                         max_answer_length=options.max_answer_length)
        result = score_predictions(examples, decoded, bool(options.version_2), options.null_threshold)
        if loss is not None:
            result.metrics["eval_loss"] = loss
        result.metrics["eval_questions"] = len(examples)
        result.metrics["eval_time_s"] = round(time.perf_counter() - t0, 3)
        return eval_result(result, bool(options.version_2))

    # -- inference -----------------------------------------------------------------------------------
    def run_windows(self, span_model: Any, features: QAFeatures, pad_token_id: int, batch_size: int, device: Any,
                    precision: str, progress: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
        from qatune.tasks.extractive_qa.inference import predict_logits

        starts, ends, _ = predict_logits(span_model, features, pad_token_id, batch_size, device, precision,
                                         progress=progress)
        return starts, ends

    def score_outputs(self, examples: Sequence[QAExample], features: QAFeatures, outputs: Any,
                      run_config: dict[str, Any], report: Any = None) -> EvalResult:
        """EM/F1 of precomputed start/end logits with the run's decoding settings and threshold."""
        from qatune.tasks.base import options_from_run

        options = options_from_run(self, run_config)
        starts, ends = outputs
        decoded = decode(examples, features, starts, ends, n_best=options.n_best,
                         max_answer_length=options.max_answer_length)
        version_2 = getattr(report, "version", "1.1") == "2.0"
        threshold = run_config.get("null_threshold") if version_2 else None
        return eval_result(score_predictions(examples, decoded, version_2, threshold), version_2)

    def best_predictions(self, examples: Sequence[QAExample], features: QAFeatures, outputs: Any,
                         run_config: dict[str, Any]) -> list[str]:
        """The best answer text per question: what two runners must agree on."""
        from qatune.tasks.base import options_from_run

        options = options_from_run(self, run_config)
        starts, ends = outputs
        decoded = decode(examples, features, starts, ends, n_best=options.n_best,
                         max_answer_length=options.max_answer_length)
        return [d.best.text if d.best else "" for d in decoded]

    def predictor(self, runner: Any, tokenizer: Any, run_config: dict[str, Any], **options: Any) -> Any:
        from qatune.tasks.extractive_qa.predictor import QAPipeline

        return QAPipeline(runner, tokenizer, run_config, **options)

    def check_options(self, options: dict[str, Any]) -> None:
        from qatune.tasks.extractive_qa.predictor import check_options

        check_options(options)

    def format_record(self, prediction: Any) -> dict[str, Any]:
        """A ``predict --input`` line: the best answer flat (``answer``, ``score``, offsets, ``no_answer``),
        plus every answer under ``answers`` when there are several (``--top-k`` > 1)."""
        answers = prediction if isinstance(prediction, list) else [prediction]
        best = answers[0].to_dict()
        record = {"answer": best["text"], "score": best["score"], "start": best["start"], "end": best["end"],
                  "no_answer": best["no_answer"]}
        if isinstance(prediction, list):
            record["answers"] = [a.to_dict() for a in answers]
        return record
