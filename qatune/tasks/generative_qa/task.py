"""Generative question answering with decoder LMs as a qatune task: prompt = context + question, target =
the answer (or a fixed no-answer text for SQuAD v2), loss on the answer tokens only, answers generated and
scored with the official SQuAD EM/F1 like extractive QA (plus BLEU-1)."""

from __future__ import annotations

import time
from typing import Any, Sequence

from qatune.data.squad.squad_task import SquadTaskMixin
from qatune.data.squad.squad_types import QAExample
from qatune.tasks.base import EvalResult, ModelSpec, ReportColumn, ReportSpec
from qatune.tasks.generative_qa.options import GenerativeOptions, resolve_options
from qatune.tasks.generative_qa.prompts import GenFeatures, build_features


def _pct(v: float) -> str:
    return f"{v:.1f}"


class GenerativeQATask(SquadTaskMixin):
    name = "generative_qa"
    section = "generative"
    options_type = GenerativeOptions
    model = ModelSpec(head="causal_lm")
    export_signature = None  # generation is a loop over the KV cache, not one graph: no ONNX export
    run_files = ("predictions.json", "na_probs.json")
    eval_only_options = frozenset({"max_new_tokens", "num_beams", "null_threshold", "version_2"})
    route = "answer"  # the server's POST /v1/answer, the same schema as extractive QA
    zero_shot = True  # a base causal LM answers without training (qatune evaluate MODEL --task generative)
    report = ReportSpec(
        columns=(ReportColumn("exact_match", "EM (%)", _pct), ReportColumn("f1", "F1 (%)", _pct),
                 ReportColumn("bleu1", "BLEU-1", _pct)),
        primary="f1",
        optional=(ReportColumn("HasAns_f1", "HasAns F1 (%)", _pct), ReportColumn("NoAns_f1", "NoAns F1 (%)", _pct)),
        metric_note="EM/F1: official SQuAD exact match and token F1 (%) of the generated answers; BLEU-1: "
                    "sacrebleu corpus BLEU with n-grams up to 1 over the answerable questions",
        optional_note="HasAns/NoAns F1 split answerable and unanswerable questions (SQuAD v2)",
        loss_note="Losses: mean cross-entropy of the answer tokens and their end token (nats); the prompt has no "
                  "loss term.",
    )
    data_kind = "squad"  # SQuAD question/context/answers files: shared with the other QA task
    sample_data = None
    request_fields = {"question": "the question (non-empty string)",
                      "context": "the text that holds the answer (non-empty string, any length: cut to fit)"}
    # v2 follows the *training* data: the prompt's no-answer instruction and the no-answer targets are what the
    # model is trained on, so inference must use the same prompt; a zero-shot evaluation has no training data
    # and falls back to the evaluation data's version
    squad_version_from = "train"

    # -- options and data -----------------------------------------------------------------------------
    def resolve_options(self, options: dict[str, Any], context: dict[str, Any], source: str) -> GenerativeOptions:
        return resolve_options(options, int(context.get("max_seq_length", 384)))

    # -- training ------------------------------------------------------------------------------------
    def features(self, examples: Sequence[QAExample], tokenizer: Any, options: Any, max_seq_length: int,
                 training: bool, cache_dir: str | None = None, progress: bool = False,
                 use_cache: bool = True) -> GenFeatures:
        """One prompt per question (+ answer tokens when ``training``); tokenising is quick, so not cached."""
        return build_features(examples, tokenizer, options, max_seq_length, training)

    def wrap(self, model: Any) -> Any:
        from qatune.tasks.generative_qa.generation import CausalLM

        return CausalLM(model)

    def train_batches(self, features: GenFeatures, batch_size: int, seed: int, group: bool) -> list[list[int]]:
        from qatune.core.batching import length_grouped_batches

        return length_grouped_batches(features.lengths, batch_size, seed, group)

    def collate(self, features: GenFeatures, indices: Sequence[int], tokenizer: Any) -> dict[str, Any]:
        from qatune.tasks.generative_qa.generation import continuation_batch

        assert features.target_ids is not None, "training features carry answer tokens"
        return continuation_batch([features.prompt_ids[i] for i in indices], [features.target_ids[i] for i in indices],
                                  features.generation.pad_id)

    def loss(self, module: Any, batch: dict[str, Any]) -> Any:
        from qatune.tasks.generative_qa.generation import answer_loss

        return answer_loss(module, batch)

    def evaluate(self, module: Any, tokenizer: Any, examples: Sequence[QAExample], features: GenFeatures,
                 options: GenerativeOptions, *, batch_size: int, device: Any, precision: str,
                 progress: bool = False) -> EvalResult:
        """Validation loss on the labelled prompts, then generated answers scored like ``qatune evaluate``."""
        from qatune.tasks.generative_qa.generation import eval_loss
        from qatune.tasks.generative_qa.predictor import GenerativePipeline

        t0 = time.perf_counter()
        loss = eval_loss(module, features, batch_size, device, precision)
        runner = _ModuleRunner(self, module, device, precision)
        config = {"max_seq_length": _max_seq_length(features), self.section: _as_dict(options),
                  "version_2_model": bool(options.version_2)}
        result = GenerativePipeline(runner, tokenizer, config).evaluate(
            examples, batch_size=batch_size, progress=progress, null_threshold=options.null_threshold)
        if loss is not None:
            result.metrics["eval_loss"] = loss
        result.metrics["eval_time_s"] = round(time.perf_counter() - t0, 3)
        return result

    # -- inference -----------------------------------------------------------------------------------
    def run_windows(self, module: Any, features: GenFeatures, pad_token_id: int, batch_size: int, device: Any,
                    precision: str, progress: bool = False) -> Any:
        """Generation is the runner's work here: per prompt the answer tokens, their log-probability and the
        no-answer text's log-probability (see :func:`generation.generate_answers`)."""
        from qatune.tasks.generative_qa.generation import generate_answers

        return generate_answers(module, features, batch_size, device, precision, progress=progress)

    def score_outputs(self, examples: Sequence[QAExample], features: GenFeatures, outputs: Any,
                      run_config: dict[str, Any], report: Any = None) -> EvalResult:
        raise NotImplementedError("generative QA has no exported graph whose outputs could be scored")

    def best_predictions(self, examples: Sequence[QAExample], features: GenFeatures, outputs: Any,
                         run_config: dict[str, Any]) -> list[Any]:
        return [list(map(int, t)) for t in outputs[0]]

    def predictor(self, runner: Any, tokenizer: Any, run_config: dict[str, Any], **options: Any) -> Any:
        from qatune.tasks.generative_qa.predictor import GenerativePipeline

        return GenerativePipeline(runner, tokenizer, run_config, **options)

    def check_options(self, options: dict[str, Any]) -> None:
        from qatune.tasks.generative_qa.predictor import check_options

        check_options(options)


class _ModuleRunner:
    """The model being trained as a runner (per-epoch evaluation goes through the predictor too)."""

    def __init__(self, task: GenerativeQATask, module: Any, device: Any, precision: str) -> None:
        self.task, self.module, self.device, self.precision = task, module, device, precision

    def __call__(self, features: Any, batch_size: int, progress: bool = False) -> Any:
        return self.task.run_windows(self.module, features, features.generation.pad_id, batch_size, self.device,
                                     self.precision, progress=progress)


def _as_dict(options: GenerativeOptions) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(options)


def _max_seq_length(features: GenFeatures) -> int:
    return int(features.max_seq_length)
