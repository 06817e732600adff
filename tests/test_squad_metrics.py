"""Hand-computed checks of the SQuAD v1.1 / v2.0 metrics against the official scripts' semantics.

Every expected number is a literal worked out by hand (arithmetic in the comment next to it), never
recomputed with the code under test.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from qatune.data.squad.squad_metrics import (
    apply_no_ans_threshold,
    compute_exact_v2,
    compute_f1_v2,
    exact_match_v1,
    f1_v1,
    filter_dataset,
    find_best_thresh,
    is_squad_v2,
    normalize_answer,
    squad_evaluate,
    squad_v1_evaluate,
    squad_v2_evaluate,
)
from qatune.errors import ConfigError, DataError, QatuneError

OFFICIAL_V2_KEYS = [
    "exact",
    "f1",
    "total",
    "HasAns_exact",
    "HasAns_f1",
    "HasAns_total",
    "NoAns_exact",
    "NoAns_f1",
    "NoAns_total",
    "best_exact",
    "best_exact_thresh",
    "best_f1",
    "best_f1_thresh",
]


def qa(qid: str, *answers: str, impossible: bool | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": qid,
        "question": f"question {qid}?",
        "answers": [{"text": text, "answer_start": 0} for text in answers],
    }
    if impossible is not None:
        record["is_impossible"] = impossible
    return record


def article(*paragraphs: list[dict[str, Any]], title: str = "T") -> dict[str, Any]:
    return {"title": title, "paragraphs": [{"context": "ctx", "qas": qas} for qas in paragraphs]}


# --------------------------------------------------------------------------- normalize_answer


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("the Eiffel Tower", "eiffel tower"),  # article dropped, lower-cased
        ("An apple a day", "apple day"),  # "An" and "a" are articles
        ("theater", "theater"),  # \b...\b: "the" inside a word stays
        ("Paris, France!", "paris france"),  # ASCII punctuation removed
        ("Eiffel-Tower", "eiffeltower"),  # punctuation deleted, not replaced by a space
        ("\tEiffel\n   Tower  ", "eiffel tower"),  # whitespace collapsed and stripped
        ("A.B", "ab"),  # punctuation before articles: "a.b" -> "ab" (articles first would give "b")
        ("\u201chi\u201d", "\u201chi\u201d"),  # curly quotes are not in string.punctuation: kept
        ("The", ""),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


# --------------------------------------------------------------------------- token metrics


def test_exact_match_v1_ignores_articles_case_punctuation_whitespace() -> None:
    assert exact_match_v1("the Eiffel Tower", "Eiffel Tower") is True
    assert exact_match_v1("EIFFEL   tower.", "eiffel tower") is True
    assert exact_match_v1("Eiffel Tower Paris", "Eiffel Tower") is False


def test_compute_exact_v2_is_int() -> None:
    assert compute_exact_v2("Eiffel Tower", "the eiffel tower!") == 1
    assert compute_exact_v2("Eiffel Tower", "Tower") == 0


@pytest.mark.parametrize("f1", [f1_v1, compute_f1_v2])
@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("the Eiffel Tower", "Eiffel Tower", 1.0),  # identical after normalisation
        # pred [eiffel, tower, paris] vs gold [eiffel, tower]: P=2/3, R=1, F1=2*(2/3)/(5/3)=0.8
        ("Eiffel Tower Paris", "Eiffel Tower", 0.8),
        # pred [big, red, dog] vs gold [red, dog, barked, loudly]: same=2, P=2/3, R=1/2,
        # F1 = 2*(1/3)/(7/6) = 4/7
        ("the big red dog", "red dog barked loudly", 4 / 7),
        # bags {dog:2, cat:1} & {dog:1, cat:2} = 2 shared, P=R=2/3, F1=2/3
        ("dog dog cat", "dog cat cat", 2 / 3),
        ("Denver Broncos", "Carolina Panthers", 0.0),  # no overlap
    ],
)
def test_f1_partial_overlap(f1: Any, pred: str, gold: str, expected: float) -> None:
    # the v2 function takes (gold, pred); F1 is symmetric so the order does not change the value
    assert f1(pred, gold) == pytest.approx(expected)


def test_empty_strings_differ_between_v1_and_v2() -> None:
    # v1.1: num_same == 0 -> F1 0 even when both are empty, although EM says they match
    assert f1_v1("", "") == 0.0
    assert f1_v1("the", "a") == 0.0
    assert exact_match_v1("the", "a") is True
    # v2.0: either side without tokens -> F1 = 1 if both empty else 0
    assert compute_f1_v2("", "") == 1.0
    assert compute_f1_v2("the", "") == 1.0  # gold "the" has no tokens either
    assert compute_f1_v2("Paris", "") == 0.0
    assert compute_f1_v2("", "Paris") == 0.0
    assert compute_exact_v2("", "") == 1
    # answerable gold, empty prediction: 0 under both rules
    assert f1_v1("", "Paris") == 0.0
    assert exact_match_v1("", "Paris") is False


# --------------------------------------------------------------------------- v1.1 evaluate

V1_DATA = [
    article(
        [
            qa("q1", "Eiffel Tower", "the Eiffel Tower in Paris"),
            qa("q2", "Denver Broncos"),
        ],
        [qa("q3", "1990"), qa("q4", "Santa Clara")],
    ),
    article([qa("q5", "Paris, France", "France")], title="U"),
]
V1_PREDS = {
    "q1": "the Eiffel Tower",  # EM 1 (first gold), F1 1
    "q2": "Broncos",  # EM 0, F1: P=1, R=1/2 -> 2/3
    "q3": "",  # EM 0, F1 0
    # q4 missing -> 0, still counted in the total
    "q5": "paris france!",  # EM 1, F1 1
}


def test_squad_v1_evaluate_counts_missing_as_zero(capsys: pytest.CaptureFixture[str]) -> None:
    result = squad_v1_evaluate(V1_DATA, V1_PREDS)
    assert list(result) == ["exact_match", "f1"]
    assert result["exact_match"] == pytest.approx(40.0)  # 100 * (1+0+0+0+1) / 5
    assert result["f1"] == pytest.approx(53.333333333)  # 100 * (1 + 2/3 + 0 + 0 + 1) / 5 = 800/15
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # warned once, not per question
    assert "1 of 5 questions" in err


def test_squad_v1_evaluate_all_present_no_warning(capsys: pytest.CaptureFixture[str]) -> None:
    preds = {**V1_PREDS, "q4": "Santa Clara, California"}  # q4: P=2/3, R=1 -> F1 0.8, EM 0
    result = squad_v1_evaluate(V1_DATA, preds)
    assert result["exact_match"] == pytest.approx(40.0)  # 100 * 2 / 5
    assert result["f1"] == pytest.approx(69.333333333)  # 100 * (1 + 2/3 + 0 + 0.8 + 1) / 5 = 100*3.4667/5
    assert capsys.readouterr().err == ""


def test_squad_v1_max_over_golds() -> None:
    data = [article([qa("q", "red dog barked loudly", "big red dog")])]
    # vs gold 1: F1 4/7; vs gold 2: exact match -> max is EM 1, F1 1
    assert squad_v1_evaluate(data, {"q": "the big red dog"}) == {"exact_match": 100.0, "f1": 100.0}
    # "red dog": vs gold 1 P=1, R=2/4 -> 2/3; vs gold 2 P=1, R=2/3 -> 0.8; max 0.8
    result = squad_v1_evaluate(data, {"q": "red dog"})
    assert result["exact_match"] == 0.0
    assert result["f1"] == pytest.approx(80.0)


def test_squad_v1_empty_dataset_does_not_divide_by_zero() -> None:
    assert squad_v1_evaluate([], {}) == {"exact_match": 0.0, "f1": 0.0}


# --------------------------------------------------------------------------- v2.0 evaluate

# h* answerable, n* unanswerable. Raw scores (exact / F1):
#   h1 "Denver Broncos" == gold          1 / 1
#   h2 "Panthers" vs "Carolina Panthers"  0 / 2/3 (P=1, R=1/2)
#   h3 "" vs "Santa Clara"                0 / 0
#   n1 ""                                 1 / 1
#   n2 "Levi's Stadium"                   0 / 0
#   n3 "1990"                             0 / 0
V2_DATA = [
    article(
        [
            qa("h1", "Denver Broncos"),
            qa("n1", impossible=True),
            qa("h2", "Carolina Panthers", "Panthers of Carolina"),
        ],
        [qa("n2", impossible=True), qa("h3", "Santa Clara"), qa("n3", impossible=True)],
    )
]
V2_PREDS = {
    "h1": "Denver Broncos",
    "h2": "Panthers",
    "h3": "",
    "n1": "",
    "n2": "Levi's Stadium",
    "n3": "1990",
}
# walked by rising na_prob: h1 0.1, h2 0.6, n2 0.65, n3 0.7, n1 0.8, h3 0.9
V2_NA = {"h1": 0.1, "h2": 0.6, "n2": 0.65, "n3": 0.7, "n1": 0.8, "h3": 0.9}


def test_squad_v2_evaluate_without_na_probs() -> None:
    result = squad_v2_evaluate(V2_DATA, V2_PREDS)
    assert list(result) == OFFICIAL_V2_KEYS[:9]
    assert result["exact"] == pytest.approx(33.333333333)  # 100 * (1+0+0+1+0+0) / 6
    assert result["f1"] == pytest.approx(44.444444444)  # 100 * (1 + 2/3 + 1) / 6 = 100 * 4/9
    assert result["total"] == 6
    assert result["HasAns_exact"] == pytest.approx(33.333333333)  # 100 * 1/3
    assert result["HasAns_f1"] == pytest.approx(55.555555556)  # 100 * (1 + 2/3 + 0) / 3 = 100 * 5/9
    assert result["HasAns_total"] == 3
    assert result["NoAns_exact"] == pytest.approx(33.333333333)  # only n1 (empty) is right: 100 * 1/3
    assert result["NoAns_f1"] == pytest.approx(33.333333333)
    assert result["NoAns_total"] == 3


def test_squad_v2_key_order_matches_official() -> None:
    result = squad_v2_evaluate(V2_DATA, V2_PREDS, na_probs=V2_NA)
    assert list(result) == OFFICIAL_V2_KEYS


def test_squad_v2_best_thresholds_not_zero() -> None:
    result = squad_v2_evaluate(V2_DATA, V2_PREDS, na_probs=V2_NA)
    # default thresh 1.0: no na_prob exceeds it, so the main scores equal the raw ones
    assert result["exact"] == pytest.approx(33.333333333)
    assert result["f1"] == pytest.approx(44.444444444)
    # start = 3 unanswerables right. exact walk: h1 +1 -> 4 (best, 0.1); h2 +0 -> 4 (not >);
    # n2 -1 -> 3; n3 -1 -> 2; n1 0; h3 0.  best = 100 * 4/6
    assert result["best_exact"] == pytest.approx(66.666666667)
    assert result["best_exact_thresh"] == 0.1
    # F1 walk: h1 +1 -> 4 (0.1); h2 +2/3 -> 14/3 (best, 0.6); n2 -> 11/3; n3 -> 8/3; rest 0.
    # best = 100 * (14/3) / 6 = 700/9
    assert result["best_f1"] == pytest.approx(77.777777778)
    assert result["best_f1_thresh"] == 0.6


def test_find_best_thresh_direct() -> None:
    has_ans = {"h": True, "n": False}
    # start 1 (n right by abstaining); h (0.2) +0.5 -> 1.5 best at 0.2; n (0.4) pred non-empty -> 0.5
    best, thresh = find_best_thresh({"h": "x", "n": "y"}, {"h": 0.5, "n": 0.0}, {"h": 0.2, "n": 0.4}, has_ans)
    assert best == pytest.approx(75.0)  # 100 * 1.5 / 2
    assert thresh == 0.2


def test_squad_v2_applies_na_prob_thresh() -> None:
    # thresh 0.6 (strict >): n2, n3, n1, h3 become "no answer"; h1 (0.1) and h2 (0.6) keep predictions
    result = squad_v2_evaluate(V2_DATA, V2_PREDS, na_probs=V2_NA, na_prob_thresh=0.6)
    assert result["exact"] == pytest.approx(66.666666667)  # h1 1, h2 0, n1 n2 n3 1, h3 0 -> 100 * 4/6
    assert result["f1"] == pytest.approx(77.777777778)  # (1 + 2/3 + 3 + 0) / 6 = 100 * 7/9
    assert result["HasAns_exact"] == pytest.approx(33.333333333)  # 100 * 1/3
    assert result["HasAns_f1"] == pytest.approx(55.555555556)  # 100 * (1 + 2/3 + 0) / 3
    assert result["NoAns_exact"] == 100.0  # all three abstain
    assert result["NoAns_f1"] == 100.0
    # thresh 0.5: h2 (0.6) now abstains too and loses its 2/3
    result = squad_v2_evaluate(V2_DATA, V2_PREDS, na_probs=V2_NA, na_prob_thresh=0.5)
    assert result["exact"] == pytest.approx(66.666666667)  # 100 * (1 + 0 + 3 + 0) / 6
    assert result["f1"] == pytest.approx(66.666666667)  # 100 * (1 + 0 + 3 + 0) / 6
    assert result["HasAns_f1"] == pytest.approx(33.333333333)  # 100 * (1 + 0 + 0) / 3
    # thresh 0.0: everything abstains -> only the 3 unanswerables are right
    result = squad_v2_evaluate(V2_DATA, V2_PREDS, na_probs=V2_NA, na_prob_thresh=0.0)
    assert result["exact"] == pytest.approx(50.0)  # 100 * 3/6
    assert result["f1"] == pytest.approx(50.0)
    assert result["HasAns_exact"] == 0.0


def test_apply_no_ans_threshold_direct() -> None:
    scores = {"h": 0.5, "n": 0.0}
    has_ans = {"h": True, "n": False}
    # h: 0.3 > 0.3 is false -> keeps 0.5; n: 0.9 > 0.3 -> abstains, right for an unanswerable -> 1.0
    assert apply_no_ans_threshold(scores, {"h": 0.3, "n": 0.9}, has_ans, 0.3) == {"h": 0.5, "n": 1.0}
    # h: 0.8 > 0.3 -> abstains on an answerable question -> 0.0
    assert apply_no_ans_threshold(scores, {"h": 0.8, "n": 0.1}, has_ans, 0.3) == {"h": 0.0, "n": 0.0}


def test_squad_v2_unanswerable_predictions() -> None:
    data = [article([qa("n1", impossible=True), qa("n2", impossible=True)])]
    result = squad_v2_evaluate(data, {"n1": "", "n2": "something"})
    assert list(result) == ["exact", "f1", "total", "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert result["exact"] == 50.0  # n1 empty = right, n2 non-empty = wrong: 100 * 1/2
    assert result["f1"] == 50.0
    assert result["NoAns_total"] == 2


def test_squad_v2_only_answerable_has_no_noans_keys() -> None:
    data = [article([qa("q", "Eiffel Tower")])]
    result = squad_v2_evaluate(data, {"q": "Eiffel Tower Paris"})  # F1 0.8, EM 0
    assert list(result) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"]
    assert result["f1"] == pytest.approx(80.0)
    assert result["HasAns_f1"] == pytest.approx(80.0)


def test_empty_prediction_for_answerable_v1_vs_v2() -> None:
    # gold "The" normalises to '': v1 compares "" with "" (EM 1, F1 0); v2 drops it, gold becomes ''
    # and scores with the both-empty rule (EM 1, F1 1)
    data = [article([qa("q", "The")])]
    assert squad_v1_evaluate(data, {"q": ""}) == {"exact_match": 100.0, "f1": 0.0}
    result = squad_v2_evaluate(data, {"q": ""})
    assert (result["exact"], result["f1"]) == (100.0, 100.0)
    assert result["HasAns_total"] == 1  # the question still has an answer entry, so it is HasAns
    # with a real gold next to it, v2 ignores "the" and the empty prediction is wrong
    data = [article([qa("q", "the", "Paris")])]
    assert squad_v1_evaluate(data, {"q": ""}) == {"exact_match": 100.0, "f1": 0.0}  # EM via "the"
    result = squad_v2_evaluate(data, {"q": ""})
    assert (result["exact"], result["f1"]) == (0.0, 0.0)
    # and a plain answerable question with an empty prediction scores 0 in both versions
    data = [article([qa("q", "Santa Clara")])]
    assert squad_v1_evaluate(data, {"q": ""}) == {"exact_match": 0.0, "f1": 0.0}
    result = squad_v2_evaluate(data, {"q": ""})
    assert (result["exact"], result["f1"]) == (0.0, 0.0)


def test_squad_v2_missing_predictions_are_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    preds = {k: v for k, v in V2_PREDS.items() if k not in ("h3", "n2")}
    result = squad_v2_evaluate(V2_DATA, preds)
    assert result["total"] == 4  # h1 h2 n1 n3 scored; h3, n2 left out (not counted as 0)
    assert result["exact"] == pytest.approx(50.0)  # h1 1, h2 0, n1 1, n3 0 -> 100 * 2/4
    assert result["f1"] == pytest.approx(66.666666667)  # (1 + 2/3 + 1 + 0) / 4 = 100 * 2/3
    assert result["HasAns_total"] == 2
    assert result["HasAns_f1"] == pytest.approx(83.333333333)  # (1 + 2/3) / 2 = 100 * 5/6
    assert result["NoAns_total"] == 2
    assert result["NoAns_exact"] == pytest.approx(50.0)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "2 of 6 questions" in err


def test_squad_v2_missing_predictions_with_na_probs() -> None:
    preds = {k: v for k, v in V2_PREDS.items() if k not in ("h3", "n2")}
    result = squad_v2_evaluate(V2_DATA, preds, na_probs=V2_NA)
    # scored h1 h2 n1 n3; start = 2 (n1, n3). exact: h1 +1 -> 3 (0.1); h2 0; n3 -1 -> 2; n1 0
    assert result["best_exact"] == pytest.approx(75.0)  # 100 * 3/4
    assert result["best_exact_thresh"] == 0.1
    # F1: h1 -> 3 (0.1); h2 +2/3 -> 11/3 (best, 0.6); n3 -> 8/3; n1 0. 100 * (11/3) / 4 = 275/3
    assert result["best_f1"] == pytest.approx(91.666666667)
    assert result["best_f1_thresh"] == 0.6


def test_squad_v2_na_probs_must_cover_predictions() -> None:
    na = {k: v for k, v in V2_NA.items() if k != "h2"}
    with pytest.raises(DataError, match="h2"):
        squad_v2_evaluate(V2_DATA, V2_PREDS, na_probs=na)


def test_squad_v2_empty_is_zero_not_crash() -> None:
    assert squad_v2_evaluate([], {}) == {"exact": 0.0, "f1": 0.0, "total": 0}


# --------------------------------------------------------------------------- dispatch


def test_is_squad_v2() -> None:
    assert is_squad_v2(V1_DATA) is False
    assert is_squad_v2(V2_DATA) is True
    assert is_squad_v2([article([qa("a", "x"), qa("b")])]) is True  # answers == [] without the flag
    assert is_squad_v2([article([qa("a", "x", impossible=False)])]) is False
    assert is_squad_v2([article([qa("a", "x", impossible=True)])]) is True  # flag wins
    assert is_squad_v2([]) is False


def test_squad_evaluate_dispatch() -> None:
    v1 = squad_evaluate(V1_DATA, V1_PREDS)
    assert list(v1) == ["exact_match", "f1"]
    assert v1["exact_match"] == pytest.approx(40.0)
    v2 = squad_evaluate(V2_DATA, V2_PREDS, na_probs=V2_NA)
    assert list(v2) == OFFICIAL_V2_KEYS
    assert v2["best_f1"] == pytest.approx(77.777777778)
    # forced versions
    assert list(squad_evaluate(V2_DATA, V2_PREDS, version="1.1")) == ["exact_match", "f1"]
    forced = squad_evaluate(V1_DATA, V1_PREDS, version="2.0")
    assert forced["total"] == 4  # v2 rules: missing q4 is left out
    assert forced["exact"] == pytest.approx(50.0)  # 100 * 2/4


def test_squad_evaluate_rejects_unknown_version() -> None:
    with pytest.raises(ConfigError, match=r"3\.0"):
        squad_evaluate(V1_DATA, V1_PREDS, version="3.0")
    assert issubclass(ConfigError, QatuneError)


# --------------------------------------------------------------------------- filter_dataset


def test_filter_dataset_keeps_only_requested_and_drops_empties() -> None:
    original = copy.deepcopy(V1_DATA)
    # V1_DATA: article T (p0: q1 q2, p1: q3 q4), article U (p0: q5)
    filtered = filter_dataset(V1_DATA, {"q2", "q5", "unknown"})
    assert [a["title"] for a in filtered] == ["T", "U"]
    assert len(filtered[0]["paragraphs"]) == 1  # p1 (q3, q4) emptied and dropped
    assert [q["id"] for q in filtered[0]["paragraphs"][0]["qas"]] == ["q2"]
    assert filtered[0]["paragraphs"][0]["context"] == "ctx"  # other keys kept
    assert [q["id"] for q in filtered[1]["paragraphs"][0]["qas"]] == ["q5"]

    only_q3 = filter_dataset(V1_DATA, {"q3"})
    assert len(only_q3) == 1  # article U emptied and dropped
    assert [q["id"] for q in only_q3[0]["paragraphs"][0]["qas"]] == ["q3"]
    assert filter_dataset(V1_DATA, set()) == []
    assert original == V1_DATA  # input untouched


def test_filter_dataset_scores_only_the_subset(capsys: pytest.CaptureFixture[str]) -> None:
    subset = filter_dataset(V1_DATA, {"q1", "q2"})
    result = squad_v1_evaluate(subset, {"q1": "the Eiffel Tower", "q2": "Broncos"})
    assert result["exact_match"] == pytest.approx(50.0)  # 100 * (1 + 0) / 2
    assert result["f1"] == pytest.approx(83.333333333)  # 100 * (1 + 2/3) / 2
    assert capsys.readouterr().err == ""  # nothing missing in the subset
