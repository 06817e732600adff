"""Batched QA inference: the replacement for transformers' removed ``pipeline("question-answering")``.

Windows over long contexts (any length), answers mapped back to character offsets, top-k answers with
probabilities, SQuAD v2 no-answer with the run's threshold, bf16 where the hardware has it. Evaluation
uses the same code, so ``qatune predict`` and ``qatune evaluate`` give the same answers.

The model is reached through a *runner* (features in, start/end logits out), so an exported ONNX model
serves through exactly the same pre- and post-processing as the PyTorch one.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from qatune.data.types import QAExample
from qatune.errors import ConfigError, DataError
from qatune.ranges import Range, check_option
from qatune.tasks.qa.features import QAFeatures, build_features
from qatune.tasks.qa.postprocess import Decoded, decode

# keyword options of the inference entry points, checked before any work (the CLI flags share the names)
BATCH_SIZE = Range(1, why="windows per forward pass")
TOP_K = Range(1, why="answers returned per question")
NULL_THRESHOLD = Range(why="the SQuAD v2 no-answer score margin, e.g. 0.0")
PRECISIONS = ("auto", "bf16", "fp32")  # of a PyTorch run; an ONNX export's loader knows its own


def check_run_config(cfg: dict[str, Any]) -> None:
    """The decoding settings a run recorded (qatune.yaml) in the ranges training allows: a hand-edited
    ``n_best: 0`` would otherwise answer nothing, ``null_threshold: .nan`` flag nothing, without a word."""
    from qatune.config import RANGES, _max_doc_stride

    def label(key: str) -> str:
        return f"run config (qatune.yaml) key '{key}'"

    for key in ("max_seq_length", "n_best", "max_answer_length"):
        check_option(key, cfg.get(key), RANGES[key], integer=True, label=label(key))
    stride = Range(0, _max_doc_stride(int(cfg.get("max_seq_length") or 384)), why="tokens shared by neighbouring windows")
    check_option("doc_stride", cfg.get("doc_stride"), stride, integer=True, label=label("doc_stride"))
    check_option("null_threshold", cfg.get("null_threshold"), NULL_THRESHOLD, label=label("null_threshold"))


@dataclass
class Answer:
    text: str
    score: float  # probability among the n-best spans (or of no-answer)
    start: int  # character offsets in the context; -1 for no answer
    end: int
    no_answer: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Runner(Protocol):
    """Computes unpadded start/end logits for every window."""

    def __call__(self, features: QAFeatures, batch_size: int, progress: bool = False
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]: ...


class TorchRunner:
    """A PyTorch model as a runner.

    With bf16 and ``bf16_weights`` the weights are converted to bf16 once: autocast alone re-casts every fp32
    weight on every call. The conversion changes ``model`` in place, so only a caller that owns the model
    asks for it (``load_pipeline`` does); the default leaves a shared model as it is. The logits come back
    as float32 either way.
    """

    def __init__(self, model: Any, tokenizer: Any, device: str = "auto", precision: str = "auto",
                 bf16_weights: bool = False) -> None:
        import torch

        from qatune import runtime
        from qatune.tasks.qa.modeling import QASpanModel

        self.device = runtime.pick_device(device)
        self.precision = runtime.resolve_precision(precision, self.device)
        self.span_model = QASpanModel(model).to(self.device).eval()
        if self.precision == "bf16" and bf16_weights:
            self.span_model.to(torch.bfloat16)
        self.pad_token_id = tokenizer.pad_token_id

    def __call__(self, features: QAFeatures, batch_size: int, progress: bool = False
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        from qatune.tasks.qa.inference import predict_logits

        starts, ends, _ = predict_logits(self.span_model, features, self.pad_token_id, batch_size, self.device,
                                         self.precision, progress=progress)
        return starts, ends


# Loaders for run directories that are not PyTorch runs (e.g. ONNX exports): (predicate, factory).
RUNNER_LOADERS: list[tuple[Callable[[Path], bool], Callable[..., tuple[Runner, Any, dict[str, Any]]]]] = []


def _register_builtin_loaders() -> None:
    from qatune.export.runner import register  # numpy only: onnxruntime is imported when an export loads

    register(RUNNER_LOADERS)


_register_builtin_loaders()


class QAPipeline:
    def __init__(self, runner: Runner, tokenizer: Any, run_config: dict[str, Any] | None = None,
                 null_threshold: float | None = None) -> None:
        cfg = run_config or {}
        check_run_config(cfg)
        check_option("null_threshold", null_threshold, NULL_THRESHOLD)
        self.runner = runner
        self.tokenizer = tokenizer
        self.run_config = cfg
        self.max_seq_length = int(cfg.get("max_seq_length", 384))
        self.doc_stride = int(cfg.get("doc_stride", 128))
        self.n_best = int(cfg.get("n_best", 20))
        self.max_answer_length = int(cfg.get("max_answer_length", 30))
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
            gap = decoded.score_diff
            prob = float(1 / (1 + np.exp(-np.clip(gap - self.null_threshold, -60, 60)))) if np.isfinite(gap) else 1.0
            return [Answer("", prob, -1, -1, no_answer=True)] + answers[: top_k - 1]
        return answers

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
        examples = []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise DataError(f"item {i}: expected a (question, context) pair, got {type(pair).__name__}")
            question, context = pair
            if not isinstance(question, str) or not question.strip():
                raise DataError(f"item {i}: 'question' must be a non-empty string")
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"item {i}: 'context' must be a non-empty string")
            examples.append(QAExample(id=str(i), question=question, context=context))
        if not examples:
            return []
        with self._lock:
            decoded = self.decode_examples(examples, batch_size=batch_size, progress=progress, top_k=top_k)
        out: list[Any] = []
        for d in decoded:
            answers = self._answers(d, top_k)
            out.append(answers if top_k > 1 else answers[0])
        return out

    @property
    def info(self) -> dict[str, Any]:
        cfg = self.run_config
        return {"model": cfg.get("model"), "method": cfg.get("method"), "task": cfg.get("task", "extractive_qa"),
                "version_2": self.version_2, "null_threshold": self.null_threshold}


def load_pipeline(path: str | os.PathLike, device: str = "auto", precision: str = "auto",
                  null_threshold: float | None = None, merge: bool = True) -> QAPipeline:
    """Load a run directory (PyTorch full/PEFT, or any format a RUNNER_LOADERS entry knows)."""
    from qatune.runtime import check_device

    check_device(device)  # the options first: a typo fails before minutes of loading
    check_option("null_threshold", null_threshold, NULL_THRESHOLD)
    run_dir = Path(path)
    for applies, factory in RUNNER_LOADERS:
        if applies(run_dir):
            runner, tokenizer, run_cfg = factory(run_dir, device=device, precision=precision)
            return QAPipeline(runner, tokenizer, run_cfg, null_threshold)
    from qatune.artifacts import load_trained_model

    if precision not in PRECISIONS:
        raise ConfigError(f"option 'precision' (--precision): {precision!r} is not a precision a PyTorch run "
                          f"runs in; use {', '.join(PRECISIONS)}")
    model, tokenizer, run_cfg = load_trained_model(run_dir, merge=merge)
    runner = TorchRunner(model, tokenizer, device, precision, bf16_weights=True)  # the model is ours alone
    return QAPipeline(runner, tokenizer, run_cfg, null_threshold)
