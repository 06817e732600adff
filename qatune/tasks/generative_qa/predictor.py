"""The generative-QA predictor: what ``qatune.load`` returns for a generative run (and what a zero-shot
evaluation of a base causal LM uses). Same request and response schema as extractive QA."""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any, Sequence

import numpy as np

from qatune.data.squad.squad_types import Answer, QAExample, examples_from_pairs, parse_request
from qatune.errors import ConfigError
from qatune.ranges import Range, check_option
from qatune.tasks.base import BATCH_SIZE, EvalResult, Runner
from qatune.tasks.generative_qa.options import RANGES, GenerativeOptions
from qatune.tasks.generative_qa.prompts import build_features

NULL_THRESHOLD = Range(why="the no-answer log-likelihood margin, e.g. 0.0")
OPTIONS = ("null_threshold", "max_new_tokens", "num_beams")


def check_options(options: dict[str, Any]) -> None:
    """The predictor's keyword options, before anything loads."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for a generative-QA run; known: {', '.join(OPTIONS)}")
    check_option("null_threshold", options.get("null_threshold"), NULL_THRESHOLD)
    for key in ("max_new_tokens", "num_beams"):
        check_option(key, options.get(key), RANGES[key], integer=True)


def bleu1(predictions: dict[str, str], examples: Sequence[QAExample]) -> float | None:
    """Corpus-level BLEU-1 (sacrebleu: max n-gram order 1, its default 13a tokenisation, case-sensitive,
    brevity penalty) of the final answers of the answerable questions, every gold answer a reference."""
    from sacrebleu.metrics import BLEU

    answerable = [ex for ex in examples if ex.answers and not ex.is_impossible]
    if not answerable:
        return None
    golds = [list(dict.fromkeys(a.text for a in ex.answers)) for ex in answerable]
    width = max(len(g) for g in golds)
    refs = [[g[i] if i < len(g) else None for g in golds] for i in range(width)]
    return float(BLEU(max_ngram_order=1).corpus_score([predictions.get(ex.id, "") for ex in answerable], refs).score)


class GenerativePipeline:
    """Answers written by a causal LM: batched greedy (or beam) generation over a runner."""

    def __init__(self, runner: Runner, tokenizer: Any, run_config: dict[str, Any] | None = None,
                 null_threshold: float | None = None, max_new_tokens: int | None = None,
                 num_beams: int | None = None) -> None:
        from qatune.tasks import get_task
        from qatune.tasks.base import options_from_run

        cfg = run_config or {}
        check_options({k: v for k, v in {"null_threshold": null_threshold, "max_new_tokens": max_new_tokens,
                                         "num_beams": num_beams}.items() if v is not None})
        self.task = get_task("generative_qa")
        self.runner = runner
        self.tokenizer = tokenizer
        self.run_config = cfg
        options: GenerativeOptions = options_from_run(self.task, cfg)
        overrides = {k: v for k, v in {"max_new_tokens": max_new_tokens, "num_beams": num_beams}.items() if v}
        self.options = dataclasses.replace(options, **overrides)
        self.max_seq_length = int(cfg.get("max_seq_length") or 512)
        self.version_2 = bool(cfg.get("version_2_model", options.version_2 or False))
        threshold = null_threshold if null_threshold is not None else cfg.get("null_threshold")
        # 0.0: "no answer" when the no-answer text is likelier than the generated answer
        self.null_threshold = float(threshold) if threshold is not None else 0.0
        self._lock = threading.Lock()  # one generation at a time per loaded model (server threads take turns)

    # -- core ------------------------------------------------------------------------------------
    def text(self, tokens: np.ndarray) -> str:
        """The answer's text: the tokens before the stop token, up to the first newline, trimmed."""
        stops = set(self.tokenizer_stop_ids())
        seq = [int(t) for t in tokens if int(t) not in stops]
        return self.tokenizer.decode(seq, skip_special_tokens=True).split("\n")[0].strip()

    def tokenizer_stop_ids(self) -> tuple[int, ...]:
        from qatune.tasks.generative_qa.prompts import stop_ids

        return stop_ids(self.tokenizer)

    def generate(self, examples: Sequence[QAExample], version_2: bool, batch_size: int = 16,
                 progress: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Per question: the answer text, its log-probability, the no-answer text's (NaN unless v2)."""
        options = dataclasses.replace(self.options, version_2=version_2)
        features = build_features(examples, self.tokenizer, options, self.max_seq_length, training=False,
                                  announce=progress)
        with self._lock:
            tokens, logprobs, no_answer = self.runner(features, batch_size, progress=progress)
        return ([self.text(t) for t in tokens], np.array([float(x[0]) for x in logprobs]),
                np.array([float(x[0]) for x in no_answer]))

    def evaluate(self, examples: Sequence[QAExample], batch_size: int = 16, progress: bool = False,
                 report: Any = None, null_threshold: float | None = None, max_new_tokens: int | None = None,
                 num_beams: int | None = None) -> EvalResult:
        """Official EM/F1 (+ HasAns/NoAns and the tuned no-answer threshold for v2 data) and BLEU-1."""
        from qatune.data.squad.squad_scoring import score_answers

        check_options({k: v for k, v in {"null_threshold": null_threshold, "max_new_tokens": max_new_tokens,
                                         "num_beams": num_beams}.items() if v is not None})
        saved = self.options
        self.options = dataclasses.replace(saved, **{k: v for k, v in {"max_new_tokens": max_new_tokens,
                                                                        "num_beams": num_beams}.items() if v})
        try:
            version = getattr(report, "version", None) or (
                "2.0" if any(ex.is_impossible or not ex.answers for ex in examples) else "1.1")
            version_2 = version == "2.0"
            texts, answer_lp, no_answer_lp = self.generate(examples, version_2, batch_size, progress)
        finally:
            self.options = saved
        answers = {ex.id: t for ex, t in zip(examples, texts, strict=True)}
        gaps = {ex.id: float(n - a) for ex, a, n in zip(examples, answer_lp, no_answer_lp, strict=True)} \
            if version_2 else {}
        result = score_answers(examples, answers, gaps, version_2, null_threshold)
        metrics = result.metrics
        metrics["bleu1"] = bleu1(result.predictions, examples)
        if version_2 and "NoAns_exact" in metrics:
            metrics["no_answer_accuracy"] = metrics["NoAns_exact"]
        metrics.update({"eval_questions": len(examples), "squad_version": version})
        return EvalResult(metrics=metrics, files=result.files(version_2), record={"null_threshold": result.null_threshold})

    def predict_batch(self, items: Sequence[Any], batch_size: int = 16, progress: bool = False,
                      top_k: int = 1) -> list[Any]:
        pairs = [parse_request(item, f"item {i}") for i, item in enumerate(items)]
        return self.answer_batch(pairs, batch_size=batch_size, top_k=top_k, progress=progress)

    # -- public API (the extractive predictor's, so predict and serve need nothing new) -------------
    def answer(self, question: str, context: str, top_k: int = 1) -> Answer | list[Answer]:
        return self.answer_batch([(question, context)], top_k=top_k)[0]

    def answer_batch(self, pairs: Sequence[tuple[str, str]], batch_size: int = 16, top_k: int = 1,
                     progress: bool = False) -> list[Any]:
        """One generated answer per (question, context) pair; ``top_k`` > 1 gives a one-answer list (a
        generative model writes one answer; ``start``/``end`` are where that text occurs in the context,
        -1 when it does not occur verbatim). ``score`` is the answer's sequence probability, or for a
        no-answer the no-answer probability."""
        check_option("top_k", top_k, Range(1, why="answers returned per question"), integer=True)
        check_option("batch_size", batch_size, BATCH_SIZE, integer=True)
        examples = examples_from_pairs(pairs)
        if not examples:
            return []
        texts, answer_lp, no_answer_lp = self.generate(examples, self.version_2, batch_size, progress)
        from qatune.data.squad.squad_scoring import no_answer_probability

        out: list[Any] = []
        for ex, text, a, n in zip(examples, texts, answer_lp, no_answer_lp, strict=True):
            gap = float(n - a) if self.version_2 else -math.inf
            if self.version_2 and gap > self.null_threshold or not text:
                answer = Answer("", no_answer_probability(gap, self.null_threshold) if self.version_2 else 1.0,
                                -1, -1, no_answer=True)
            else:
                start = ex.context.find(text)
                answer = Answer(text, float(math.exp(min(a, 0.0))), start, start + len(text) if start >= 0 else -1)
            out.append([answer] if top_k > 1 else answer)
        return out

    @property
    def info(self) -> dict[str, Any]:
        cfg = self.run_config
        return {"model": cfg.get("model"), "method": cfg.get("method"), "task": "generative_qa",
                "version_2": self.version_2, "null_threshold": self.null_threshold,
                "max_new_tokens": self.options.max_new_tokens, "num_beams": self.options.num_beams}
