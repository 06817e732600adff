"""The serving engine of a :class:`~qatune.tasks.extractive_qa.predictor.QAPipeline`: work counted and run per
window (``QAPipeline.window_engine`` hands it to the server's batcher, which knows no task).

``QAPipeline.answer_batch`` tokenizes, runs and decodes a list of questions in one call, so a request with
long contexts would hold the model until all of its windows are done. The server instead splits that call
into its three stages (the same functions ``answer_batch`` uses, so the answers are the same): tokenize a
request into windows once, compute any windows of any requests together in a step, and decode a request
when its last window is in. That lets the batcher bound the work per request (in windows) and interleave
requests window by window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from qatune.data.squad.squad_types import QAExample
from qatune.tasks.extractive_qa.features import QAFeatures, build_features
from qatune.tasks.extractive_qa.postprocess import decode


@dataclass
class WindowWork:
    """One request: its examples, windows and, filled in step by step, each window's logits."""

    examples: list[QAExample]
    top_ks: list[int]
    features: QAFeatures
    starts: list[np.ndarray | None]
    ends: list[np.ndarray | None]

    @property
    def windows(self) -> int:
        return len(self.features)


class PipelineEngine:
    """Tokenize / compute / finish over a QAPipeline's tokenizer, runner and decoding."""

    def __init__(self, pipeline: Any, batch_size: int = 32) -> None:
        self.pipeline = pipeline
        self.batch_size = batch_size  # windows per forward pass inside a step

    def tokenize(self, pairs: Sequence[tuple[str, str]], top_ks: Sequence[int]) -> WindowWork:
        p = self.pipeline
        examples = [QAExample(id=str(i), question=q, context=c) for i, (q, c) in enumerate(pairs)]
        with p._lock:  # the tokenizer's truncation state is per call: one user at a time
            features = build_features(examples, p.tokenizer, p.max_seq_length, p.doc_stride, training=False,
                                      use_cache=False, progress=False)
        n = len(features)
        return WindowWork(examples, list(top_ks), features, [None] * n, [None] * n)

    def compute(self, parts: Sequence[tuple[WindowWork, int, int]]) -> None:
        """One runner call over windows ``[lo, hi)`` of several requests (ragged, as the runner expects)."""
        picks = [(w, i) for w, lo, hi in parts for i in range(lo, hi)]
        if not picks:
            return
        with_types = all(w.features.token_type_ids is not None for w, _ in picks)
        merged = QAFeatures(
            input_ids=[w.features.input_ids[i] for w, i in picks],
            token_type_ids=[w.features.token_type_ids[i] for w, i in picks] if with_types else None,
            offsets=[w.features.offsets[i] for w, i in picks],
            example_index=np.arange(len(picks), dtype=np.int64),
        )
        with self.pipeline._lock:
            starts, ends = self.pipeline.runner(merged, self.batch_size)
        for (w, i), s, e in zip(picks, starts, ends, strict=True):
            w.starts[i] = s
            w.ends[i] = e

    def finish(self, work: WindowWork) -> list[list[Any]]:
        p = self.pipeline
        out: list[list[Any] | None] = [None] * len(work.examples)
        # questions whose top_k is at most n_best decode identically together (as answer_batch does)
        groups: dict[int, list[int]] = {}
        for q, k in enumerate(work.top_ks):
            groups.setdefault(k if k > p.n_best else 0, []).append(q)
        for qs in groups.values():
            top_k = max(work.top_ks[q] for q in qs)
            if len(qs) == len(work.examples):
                examples, features, starts, ends = work.examples, work.features, work.starts, work.ends
            else:
                examples, features, starts, ends = _subset(work, qs)
            decoded = decode(examples, features, starts, ends, n_best=p.n_best,
                             max_answer_length=p.max_answer_length, top_k=top_k)
            for q, d in zip(qs, decoded, strict=True):
                out[q] = p._answers(d, work.top_ks[q])
        return [o or [] for o in out]

    def describe(self, work: WindowWork) -> str:
        p = self.pipeline
        n = len(work.examples)
        return (f" of {p.max_seq_length} tokens ({n} context{'s' if n != 1 else ''}, "
                f"{sum(len(e.context) for e in work.examples):,} characters, cut with doc_stride {p.doc_stride})")


def _subset(work: WindowWork, questions: list[int]) -> tuple[list[QAExample], QAFeatures, list[Any], list[Any]]:
    """The examples, windows and logits of some of a request's questions, re-indexed from 0."""
    remap = {q: new for new, q in enumerate(questions)}
    rows = [i for i, q in enumerate(work.features.example_index.tolist()) if q in remap]
    f = work.features
    features = QAFeatures(
        input_ids=[f.input_ids[i] for i in rows],
        token_type_ids=[f.token_type_ids[i] for i in rows] if f.token_type_ids is not None else None,
        offsets=[f.offsets[i] for i in rows],
        example_index=np.asarray([remap[int(f.example_index[i])] for i in rows], dtype=np.int64),
    )
    return ([work.examples[q] for q in questions], features, [work.starts[i] for i in rows],
            [work.ends[i] for i in rows])
