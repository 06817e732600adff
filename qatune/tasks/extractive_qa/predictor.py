"""The QA predictor: batched QA inference, the replacement for transformers' removed
``pipeline("question-answering")``.

Windows over long contexts (any length), answers mapped back to character offsets, top-k answers with
probabilities, SQuAD v2 no-answer with the run's threshold, bf16 where the hardware has it. Evaluation
uses the same code, so ``qatune predict`` and ``qatune evaluate`` give the same answers.

The model is reached through a *runner* (features in, start/end logits out; see
:mod:`qatune.inference.loader`), so an exported ONNX model serves through exactly the same pre- and
post-processing as the PyTorch one.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from qatune.data.squad.squad_types import Answer, QAExample, examples_from_pairs, parse_request  # noqa: F401 - Answer: API
from qatune.ranges import Range, check_option
from qatune.tasks.base import BATCH_SIZE, EvalResult, Runner
from qatune.tasks.extractive_qa.features import build_features
from qatune.tasks.extractive_qa.postprocess import Decoded, decode, no_answer_probability

# keyword options of the QA predictor, checked before any work (the CLI flags share the names); batch_size
# is every predictor's (qatune.inference.loader.BATCH_SIZE)
TOP_K = Range(1, why="answers returned per question")
NULL_THRESHOLD = Range(why="the SQuAD v2 no-answer score margin, e.g. 0.0")


def check_options(options: dict[str, Any]) -> None:
    """The QA predictor's keyword options (``null_threshold``), before anything loads."""
    from qatune.errors import ConfigError

    unknown = sorted(set(options) - {"null_threshold"})
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for an extractive-QA run; known: null_threshold")
    check_option("null_threshold", options.get("null_threshold"), NULL_THRESHOLD)


def check_run_config(cfg: dict[str, Any]) -> None:
    """The decoding settings a run recorded (qatune.yaml) in the ranges training allows: a hand-edited
    ``n_best: 0`` would otherwise answer nothing, ``null_threshold: .nan`` flag nothing, without a word."""
    from qatune.tasks.extractive_qa.options import RANGES, max_doc_stride

    def label(key: str) -> str:
        return f"run config (qatune.yaml) key '{key}'"

    section = cfg.get("qa") if isinstance(cfg.get("qa"), dict) else cfg  # runs before sections: flat keys
    values = {"max_seq_length": cfg.get("max_seq_length"), **{k: section.get(k) for k in
                                                              ("n_best", "max_answer_length", "doc_stride")}}
    for key in ("max_seq_length", "n_best", "max_answer_length"):
        check_option(key, values[key], RANGES[key], integer=True, label=label(key))
    stride = Range(0, max_doc_stride(int(values["max_seq_length"] or 384)), why="tokens shared by neighbouring windows")
    check_option("doc_stride", values["doc_stride"], stride, integer=True, label=label("doc_stride"))
    check_option("null_threshold", cfg.get("null_threshold"), NULL_THRESHOLD, label=label("null_threshold"))


class QAPipeline:
    """The extractive-QA predictor (what ``qatune.load`` returns for a QA run)."""

    def __init__(self, runner: Runner, tokenizer: Any, run_config: dict[str, Any] | None = None,
                 null_threshold: float | None = None) -> None:
        from qatune.tasks import get_task
        from qatune.tasks.base import options_from_run

        cfg = run_config or {}
        check_run_config(cfg)
        check_option("null_threshold", null_threshold, NULL_THRESHOLD)
        self.task = get_task("extractive_qa")
        self.runner = runner
        self.tokenizer = tokenizer
        self.run_config = cfg
        options = options_from_run(self.task, cfg)
        self.max_seq_length = int(cfg.get("max_seq_length", 384))
        self.doc_stride = int(options.doc_stride)
        self.n_best = int(options.n_best)
        self.max_answer_length = int(options.max_answer_length)
        self.version_2 = bool(cfg.get("version_2_model", False))
        threshold = null_threshold if null_threshold is not None else cfg.get("null_threshold")
        self.null_threshold = float(threshold) if threshold is not None else 0.0
        # Fast tokenizers change their truncation state per call and the model is not meant to run twice at
        # once: threads sharing one pipeline (a web server's workers) take turns.
        self._lock = threading.Lock()

    # -- core ------------------------------------------------------------------------------------
    def decode_examples(self, examples: Sequence[QAExample], batch_size: int = 64, progress: bool = False,
                        top_k: int = 1) -> list[Decoded]:
        features = build_features(examples, self.tokenizer, self.max_seq_length, self.doc_stride,
                                  training=False, use_cache=False, progress=progress)
        starts, ends = self.runner(features, batch_size, progress=progress)
        return decode(examples, features, starts, ends, n_best=self.n_best,
                      max_answer_length=self.max_answer_length, top_k=top_k)

    def _answers(self, decoded: Decoded, top_k: int) -> list[Answer]:
        answers = [Answer(c.text, c.probability, c.start, c.end) for c in decoded.candidates[:top_k]]
        if self.version_2 and decoded.score_diff > self.null_threshold or not answers:
            prob = no_answer_probability(decoded.score_diff, self.null_threshold)
            return [Answer("", prob, -1, -1, no_answer=True)] + answers[: top_k - 1]
        return answers

    def evaluate(self, examples: Sequence[QAExample], batch_size: int = 64, progress: bool = False,
                 report: Any = None, null_threshold: float | None = None) -> EvalResult:
        """Official EM/F1 on labelled examples (SQuAD v2 when ``report`` says the data is v2: the no-answer
        threshold is tuned on them unless ``null_threshold`` is given)."""
        from qatune.tasks.extractive_qa.scoring import eval_result, score_predictions

        decoded = self.decode_examples(examples, batch_size=batch_size, progress=progress)
        version = getattr(report, "version", "2.0" if any(ex.is_impossible for ex in examples) else "1.1")
        version_2 = version == "2.0"
        result = eval_result(score_predictions(examples, decoded, version_2, null_threshold), version_2)
        result.metrics.update({"eval_questions": len(examples), "squad_version": version})
        return result

    def predict_batch(self, items: Sequence[Any], batch_size: int = 32, progress: bool = False,
                      top_k: int = 1) -> list[Any]:
        """Answers for request items (``{"question", "context"}`` objects or pairs)."""
        pairs = [parse_request(item, f"item {i}") for i, item in enumerate(items)]
        return self.answer_batch(pairs, batch_size=batch_size, top_k=top_k, progress=progress)

    # -- public API ------------------------------------------------------------------------------
    def answer(self, question: str, context: str, top_k: int = 1) -> Answer | list[Answer]:
        """Best answer (or the ``top_k`` best as a list) to one question."""
        result = self.answer_batch([(question, context)], top_k=top_k)[0]
        return result

    def answer_batch(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, top_k: int = 1,
                     progress: bool = False) -> list[Any]:
        """Answers for many (question, context) pairs; windows of all questions are batched together."""
        check_option("top_k", top_k, TOP_K, integer=True)
        check_option("batch_size", batch_size, BATCH_SIZE, integer=True)
        examples = examples_from_pairs(pairs)
        if not examples:
            return []
        with self._lock:
            decoded = self.decode_examples(examples, batch_size=batch_size, progress=progress, top_k=top_k)
        out: list[Any] = []
        for d in decoded:
            answers = self._answers(d, top_k)
            out.append(answers if top_k > 1 else answers[0])
        return out

    def window_engine(self, batch_size: int = 32) -> Any:
        """The server's engine for this predictor: tokenize, compute and decode per window (qatune serve)."""
        from qatune.tasks.extractive_qa.serve_engine import PipelineEngine

        return PipelineEngine(self, batch_size)

    @property
    def info(self) -> dict[str, Any]:
        cfg = self.run_config
        return {"model": cfg.get("model"), "method": cfg.get("method"), "task": cfg.get("task", "extractive_qa"),
                "version_2": self.version_2, "null_threshold": self.null_threshold}
