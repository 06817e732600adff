"""SQuAD v1.1 and v2.0 evaluation, reimplementing the official ``evaluate-v1.1.py`` / ``evaluate-v2.0.py``.

Reported numbers must be comparable with published SQuAD results, so every rule below follows the
official scripts, including their quirks:

* normalisation is lower -> strip ASCII punctuation -> drop articles -> collapse whitespace;
* v1.1 F1 is 0 whenever no token overlaps (so two empty strings score F1 0 but EM 1);
* v2.0 F1 is 1/0 "do they agree" when either side has no tokens, gold answers that normalise to ''
  are dropped, and a question with no usable gold answer only accepts the empty string;
* v1.1 counts a question without a prediction as 0 in the denominator, while v2.0 leaves it out
  of the raw scores altogether.

Deviations exist only where the official scripts crash (``ZeroDivisionError``/``KeyError``); they
are noted on the function concerned.

``dataset`` arguments are always the ``"data"`` list of a SQuAD JSON file (a list of articles, each
with ``paragraphs`` -> ``qas``).
"""

from __future__ import annotations

import re
import string
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from qatune.errors import ConfigError, DataError

__all__ = [
    "apply_no_ans_threshold",
    "compute_exact_v2",
    "compute_f1_v2",
    "exact_match_v1",
    "f1_v1",
    "filter_dataset",
    "find_best_thresh",
    "get_raw_scores_v2",
    "is_squad_v2",
    "make_qid_to_has_ans",
    "normalize_answer",
    "squad_evaluate",
    "squad_v1_evaluate",
    "squad_v2_evaluate",
]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")

Article = dict[str, Any]


# --------------------------------------------------------------------------- normalisation / tokens


def normalize_answer(s: str) -> str:
    """Official SQuAD normalisation; the order matters (punctuation goes before articles)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def _overlap_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """Token-bag F1 shared by both versions; 0 when nothing overlaps (also avoids 0/0)."""
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


# --------------------------------------------------------------------------- v1.1


def exact_match_v1(prediction: str, ground_truth: str) -> bool:
    """v1.1 exact match: equality after normalisation."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_v1(prediction: str, ground_truth: str) -> float:
    """v1.1 token F1. No overlap gives 0, even when both sides are empty (unlike v2.0)."""
    return _overlap_f1(_tokens(prediction), _tokens(ground_truth))


def _max_over_golds(metric: Callable[[str, str], float], prediction: str, golds: list[str]) -> float:
    return max(metric(prediction, gold) for gold in golds)


def _iter_qas(dataset: list[Article]) -> Iterator[dict[str, Any]]:
    for article in dataset:
        for paragraph in article.get("paragraphs", []):
            yield from paragraph.get("qas", [])


def _gold_texts(qa: dict[str, Any]) -> list[str]:
    return [answer["text"] for answer in qa.get("answers") or []]


def _percent(value: float, total: int) -> float:
    """100 * value / total; 0.0 for an empty selection where the official scripts divide by zero."""
    return 100.0 * value / total if total else 0.0


def _warn_missing(version: str, missing: int, total: int, effect: str) -> None:
    if missing:
        print(
            f"SQuAD v{version} evaluation: {missing} of {total} questions have no prediction; {effect}.",
            file=sys.stderr,
        )


def squad_v1_evaluate(dataset: list[Article], predictions: dict[str, str]) -> dict[str, float]:
    """Official v1.1 scores in percent: every question counts in the total, missing ones score 0.

    The official script prints one line per missing question; we print a single line with the count.
    A question without any gold answer (only possible on v2-style data forced to v1.1) is scored
    against ``['']`` instead of crashing, which with v1.1 rules means EM 1 only for an empty
    prediction and F1 always 0.
    """
    exact = f1 = 0.0
    total = missing = 0
    for qa in _iter_qas(dataset):
        total += 1
        qid = qa["id"]
        if qid not in predictions:
            missing += 1
            continue
        golds = _gold_texts(qa) or [""]
        prediction = predictions[qid]
        exact += _max_over_golds(exact_match_v1, prediction, golds)
        f1 += _max_over_golds(f1_v1, prediction, golds)
    _warn_missing("1.1", missing, total, "they score 0")
    return {"exact_match": _percent(exact, total), "f1": _percent(f1, total)}


# --------------------------------------------------------------------------- v2.0


def compute_exact_v2(gold: str, pred: str) -> int:
    """v2.0 exact match as 0/1."""
    return int(normalize_answer(gold) == normalize_answer(pred))


def compute_f1_v2(gold: str, pred: str) -> float:
    """v2.0 token F1: when either side is empty (no-answer), 1 if both are empty else 0."""
    gold_tokens = _tokens(gold)
    pred_tokens = _tokens(pred)
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    return _overlap_f1(pred_tokens, gold_tokens)


def make_qid_to_has_ans(dataset: list[Article]) -> dict[str, bool]:
    """Question id -> whether it has any gold answer (official: ``bool(qa['answers'])``)."""
    return {qa["id"]: bool(qa.get("answers")) for qa in _iter_qas(dataset)}


def get_raw_scores_v2(
    dataset: list[Article], predictions: dict[str, str]
) -> tuple[dict[str, float], dict[str, float], int]:
    """Per-question exact/F1 (max over golds) for questions that have a prediction, plus the missing count.

    Golds that normalise to '' are dropped; with none left the only correct answer is ''.
    """
    exact_scores: dict[str, float] = {}
    f1_scores: dict[str, float] = {}
    missing = 0
    for qa in _iter_qas(dataset):
        qid = qa["id"]
        golds = [text for text in _gold_texts(qa) if normalize_answer(text)] or [""]
        if qid not in predictions:
            missing += 1
            continue
        pred = predictions[qid]
        exact_scores[qid] = max(compute_exact_v2(gold, pred) for gold in golds)
        f1_scores[qid] = max(compute_f1_v2(gold, pred) for gold in golds)
    return exact_scores, f1_scores, missing


def apply_no_ans_threshold(
    scores: dict[str, float],
    na_probs: dict[str, float],
    qid_to_has_ans: dict[str, bool],
    na_prob_thresh: float,
) -> dict[str, float]:
    """Turn predictions into "no answer" where ``na_prob > thresh`` (strict): 1 if unanswerable, else 0."""
    new_scores: dict[str, float] = {}
    for qid, score in scores.items():
        if na_probs[qid] > na_prob_thresh:
            new_scores[qid] = float(not qid_to_has_ans[qid])
        else:
            new_scores[qid] = score
    return new_scores


def _eval_dict(exact: dict[str, float], f1: dict[str, float], qids: list[str]) -> dict[str, float]:
    total = len(qids)
    return {
        "exact": _percent(sum(exact[q] for q in qids), total),
        "f1": _percent(sum(f1[q] for q in qids), total),
        "total": total,
    }


def find_best_thresh(
    predictions: dict[str, str],
    scores: dict[str, float],
    na_probs: dict[str, float],
    qid_to_has_ans: dict[str, bool],
) -> tuple[float, float]:
    """Best achievable score (percent) over no-answer thresholds, and the threshold reaching it.

    Starts from "answer nothing" (every unanswerable question right) and walks questions by rising
    na_prob, switching each to its prediction; ties are walked in ``na_probs`` order as officially.
    Deviation: the official script counts unanswerable questions without a prediction in the starting
    score; we count only scored questions so the result stays within 0..100.
    """
    cur_score = float(sum(1 for qid in scores if not qid_to_has_ans[qid]))
    best_score = cur_score
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1.0 if predictions[qid] else 0.0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return _percent(best_score, len(scores)), best_thresh


def squad_v2_evaluate(
    dataset: list[Article],
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
    na_probs_source: str | None = None,
) -> dict[str, float]:
    """Official v2.0 scores, keys in the official order.

    Questions without a prediction are left out (``total`` counts only scored ones), as officially;
    a single stderr line reports how many. Deviation: the official HasAns/NoAns splits crash with a
    ``KeyError`` on missing predictions, so here they cover scored questions only and each split
    appears when it has at least one question. ``best_*`` keys appear only when ``na_probs`` is given
    (it must cover every scored question; ``na_probs_source`` names its file in the error otherwise).
    """
    qid_to_has_ans = make_qid_to_has_ans(dataset)
    exact_raw, f1_raw, missing = get_raw_scores_v2(dataset, predictions)
    _warn_missing("2.0", missing, len(qid_to_has_ans), "they are left out of the scores")

    given_na_probs = na_probs is not None
    if na_probs is None:
        na_probs = {qid: 0.0 for qid in predictions}
    else:
        lacking = [qid for qid in exact_raw if qid not in na_probs]
        if lacking:
            where = f"na-probs file {na_probs_source}: n" if na_probs_source else "N"
            raise DataError(
                f"{where}o-answer probabilities are missing for {len(lacking)} predicted questions "
                f"(first: {', '.join(lacking[:3])}); provide one per prediction."
            )

    exact_thr = apply_no_ans_threshold(exact_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    f1_thr = apply_no_ans_threshold(f1_raw, na_probs, qid_to_has_ans, na_prob_thresh)

    result = _eval_dict(exact_thr, f1_thr, list(exact_thr))
    has_ans = [qid for qid in exact_thr if qid_to_has_ans[qid]]
    no_ans = [qid for qid in exact_thr if not qid_to_has_ans[qid]]
    for prefix, qids in (("HasAns", has_ans), ("NoAns", no_ans)):
        if qids:
            for key, value in _eval_dict(exact_thr, f1_thr, qids).items():
                result[f"{prefix}_{key}"] = value

    if given_na_probs:
        best_exact, exact_thresh = find_best_thresh(predictions, exact_raw, na_probs, qid_to_has_ans)
        best_f1, f1_thresh = find_best_thresh(predictions, f1_raw, na_probs, qid_to_has_ans)
        result["best_exact"] = best_exact
        result["best_exact_thresh"] = exact_thresh
        result["best_f1"] = best_f1
        result["best_f1_thresh"] = f1_thresh
    return result


# --------------------------------------------------------------------------- dispatch / helpers


def is_squad_v2(dataset: list[Article]) -> bool:
    """True when any question is unanswerable (``is_impossible`` or no gold answers)."""
    return any(qa.get("is_impossible") is True or not qa.get("answers") for qa in _iter_qas(dataset))


def squad_evaluate(
    dataset: list[Article],
    predictions: dict[str, str],
    na_probs: dict[str, float] | None = None,
    version: str | None = None,
) -> dict[str, float]:
    """Score with the v1.1 or v2.0 rules; ``version=None`` picks v2.0 iff the data has unanswerables.

    ``na_probs`` is ignored for v1.1, which has no notion of "no answer".
    """
    if version is None:
        version = "2.0" if is_squad_v2(dataset) else "1.1"
    if version == "1.1":
        return squad_v1_evaluate(dataset, predictions)
    if version == "2.0":
        return squad_v2_evaluate(dataset, predictions, na_probs=na_probs)
    raise ConfigError(f"Unknown SQuAD evaluation version {version!r}; use '1.1' or '2.0'.")


def filter_dataset(dataset: list[Article], qids: set[str]) -> list[Article]:
    """Copy of ``dataset`` with only the questions in ``qids``, dropping emptied paragraphs and articles.

    Scoring a subset (e.g. ``--max-eval-samples``) against the full file would count the unpredicted
    questions (v1.1 scores them 0). The input is not modified; other keys are kept.
    """
    filtered: list[Article] = []
    for article in dataset:
        paragraphs = []
        for paragraph in article.get("paragraphs", []):
            qas = [qa for qa in paragraph.get("qas", []) if qa["id"] in qids]
            if qas:
                paragraphs.append({**paragraph, "qas": qas})
        if paragraphs:
            filtered.append({**article, "paragraphs": paragraphs})
    return filtered
