"""Turning start/end logits into answer spans, vectorized over all windows at once.

Same rules as HF ``utils_qa.postprocess_qa_predictions`` (n-best start and end candidates per window,
end >= start, at most ``max_answer_length`` tokens, both ends inside the context, best score across the
windows of a question; the no-answer score is the smallest CLS score over the windows), but the
candidate scoring is one numpy expression over a (windows x n x n) block instead of Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from qatune.data.squad.squad_scoring import no_answer_probability  # noqa: F401 - re-exported for the predictor
from qatune.data.squad.squad_types import QAExample
from qatune.tasks.extractive_qa.features import QAFeatures


@dataclass
class Span:
    text: str
    score: float  # start logit + end logit
    start: int  # character offsets in the context
    end: int
    probability: float = 0.0  # softmax over this question's candidates


@dataclass
class Decoded:
    """Decoded answers of one question: candidates best-first, the no-answer score and their gap."""

    candidates: list[Span] = field(default_factory=list)
    null_score: float = float("inf")

    @property
    def best(self) -> Span | None:
        return self.candidates[0] if self.candidates else None

    @property
    def score_diff(self) -> float:
        """null score - best span score: SQuAD v2 answers "" when this exceeds the threshold."""
        if self.best is None:
            return float("inf")
        return self.null_score - self.best.score


def pad_logits(logits: Sequence[np.ndarray]) -> np.ndarray:
    width = max(len(x) for x in logits)
    out = np.full((len(logits), width), -np.inf, dtype=np.float32)
    for i, row in enumerate(logits):
        out[i, : len(row)] = row
    return out


def decode(examples: Sequence[QAExample], features: QAFeatures, start_logits: Sequence[np.ndarray],
           end_logits: Sequence[np.ndarray], n_best: int = 20, max_answer_length: int = 30,
           top_k: int = 1, chunk: int = 2048) -> list[Decoded]:
    """Best spans per example; ``start_logits[i]`` covers the real tokens of window i (unpadded or padded)."""
    n_feats = len(features)
    per_window_k = max(top_k, n_best)  # keep n-best so probabilities are over the same pool as utils_qa
    cand_feat: list[np.ndarray] = []
    cand_s: list[np.ndarray] = []
    cand_e: list[np.ndarray] = []
    cand_score: list[np.ndarray] = []
    null_scores = np.empty(n_feats, dtype=np.float64)
    for lo in range(0, n_feats, chunk):
        idx = range(lo, min(lo + chunk, n_feats))
        starts = pad_logits([np.asarray(start_logits[i], dtype=np.float32) for i in idx])
        ends = pad_logits([np.asarray(end_logits[i], dtype=np.float32) for i in idx])
        null_scores[lo: lo + len(idx)] = starts[:, 0] + ends[:, 0]
        width = starts.shape[1]
        in_ctx = np.zeros((len(idx), width), dtype=bool)
        for row, i in enumerate(idx):
            offs = features.offsets[i]
            n = min(len(offs), width)
            in_ctx[row, :n] = offs[:n, 0] >= 0
        # as utils_qa: the n-best start/end tokens of the whole window, then drop those outside the context
        # (masking first would let lower-ranked context tokens in and pick answers run_qa.py never sees)
        k = min(n_best, width)
        top_s = np.argpartition(-starts, k - 1, axis=1)[:, :k]
        top_e = np.argpartition(-ends, k - 1, axis=1)[:, :k]
        rows = np.arange(len(idx))[:, None]
        s_val = np.where(in_ctx[rows, top_s], starts[rows, top_s], -np.inf)
        e_val = np.where(in_ctx[rows, top_e], ends[rows, top_e], -np.inf)
        score = s_val[:, :, None] + e_val[:, None, :]
        span = top_e[:, None, :] - top_s[:, :, None]
        valid = (span >= 0) & (span < max_answer_length) & np.isfinite(score)
        score = np.where(valid, score, -np.inf).reshape(len(idx), -1)
        kk = min(per_window_k, score.shape[1])
        best = np.argpartition(-score, kk - 1, axis=1)[:, :kk]
        best_score = np.take_along_axis(score, best, axis=1)
        keep = np.isfinite(best_score)
        feat_ids = np.broadcast_to(np.asarray(idx)[:, None], best.shape)
        cand_feat.append(feat_ids[keep])
        cand_s.append(np.take_along_axis(top_s, best // k, axis=1)[keep])
        cand_e.append(np.take_along_axis(top_e, best % k, axis=1)[keep])
        cand_score.append(best_score[keep])
    feats = np.concatenate(cand_feat) if cand_feat else np.zeros(0, np.int64)
    s_tok = np.concatenate(cand_s) if cand_s else np.zeros(0, np.int64)
    e_tok = np.concatenate(cand_e) if cand_e else np.zeros(0, np.int64)
    scores = np.concatenate(cand_score) if cand_score else np.zeros(0)

    results = [Decoded() for _ in examples]
    ex_of_feat = features.example_index
    for f in range(n_feats):  # no-answer score: the minimum over the question's windows
        d = results[ex_of_feat[f]]
        d.null_score = min(d.null_score, float(null_scores[f]))
    order = np.lexsort((-scores, ex_of_feat[feats])) if len(feats) else np.zeros(0, np.int64)
    for j in order:
        ex = int(ex_of_feat[feats[j]])
        d = results[ex]
        if len(d.candidates) >= per_window_k:
            continue
        offs = features.offsets[feats[j]]
        start_char, end_char = int(offs[s_tok[j], 0]), int(offs[e_tok[j], 1])
        text = examples[ex].context[start_char:end_char]
        if any(c.start == start_char and c.end == end_char for c in d.candidates):
            continue  # the same span seen from an overlapping window
        d.candidates.append(Span(text=text, score=float(scores[j]), start=start_char, end=end_char))
    for d in results:
        if d.candidates:
            raw = np.array([c.score for c in d.candidates])
            probs = np.exp(raw - raw.max())
            probs /= probs.sum()
            for c, p in zip(d.candidates, probs, strict=True):
                c.probability = float(p)
    return results


def final_answers(examples: Sequence[QAExample], decoded: Sequence[Decoded], version_2: bool,
                  null_threshold: float = 0.0) -> tuple[dict[str, str], dict[str, float]]:
    """Official-format predictions ``{id: text}`` and ``na_probs`` (score gaps) for SQuAD v2 scoring."""
    predictions: dict[str, str] = {}
    na_probs: dict[str, float] = {}
    for ex, d in zip(examples, decoded, strict=True):
        diff = d.score_diff
        na_probs[ex.id] = float(diff) if np.isfinite(diff) else 1e6
        if version_2 and diff > null_threshold:
            predictions[ex.id] = ""
        else:
            predictions[ex.id] = d.best.text if d.best else ""
    return predictions, na_probs
