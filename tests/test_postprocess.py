"""Span decoding: agreement with HF utils_qa's post-processing rules, plus hand-made cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qatune.tasks.extractive_qa import GoldAnswer, QAExample
from qatune.tasks.extractive_qa.features import QAFeatures, tokenize_examples
from qatune.tasks.extractive_qa.postprocess import decode, final_answers

WORDS = ("river castle green seven north lamp queen harbour silver market bridge orchard tower "
         "winter copper garden falcon meadow quartz lantern thunder violet canyon ember").split()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def reference_postprocess(examples, features, start_logits, end_logits, n_best=20, max_answer_length=30):
    """HF ``utils_qa.postprocess_qa_predictions`` (v1 part + the min-null score), written out in plain Python."""
    out = []
    for e, ex in enumerate(examples):
        min_null = None
        prelim = []
        for f in range(len(features)):
            if features.example_index[f] != e:
                continue
            s_log, e_log = list(start_logits[f]), list(end_logits[f])
            offsets = [tuple(o) if o[0] >= 0 else None for o in features.offsets[f].tolist()]
            null = s_log[0] + e_log[0]
            if min_null is None or null < min_null:
                min_null = null
            starts = np.argsort(s_log)[-1: -n_best - 1: -1].tolist()
            ends = np.argsort(e_log)[-1: -n_best - 1: -1].tolist()
            for s in starts:
                for t in ends:
                    if s >= len(offsets) or t >= len(offsets) or offsets[s] is None or offsets[t] is None:
                        continue
                    if t < s or t - s + 1 > max_answer_length:
                        continue
                    prelim.append({"score": s_log[s] + e_log[t], "start": offsets[s][0], "end": offsets[t][1]})
        preds = sorted(prelim, key=lambda p: p["score"], reverse=True)  # utils_qa keeps the first n_best
        for p in preds:
            p["text"] = ex.context[p["start"]: p["end"]]
        out.append((preds, min_null))
    return out


def _random_examples(rng: np.random.Generator, n: int) -> list[QAExample]:
    examples = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(10, 90))).tolist()
        question = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 9))).tolist()) + "?"
        examples.append(QAExample(id=f"q{i}", question=question, context=" ".join(words)))
    return examples


def test_decode_matches_utils_qa_reference_on_random_logits(tokenizer):
    rng = np.random.default_rng(1234)
    examples = _random_examples(rng, 50)
    feats = tokenize_examples(examples, tokenizer, max_seq_length=48, doc_stride=16, progress=False)
    counts = np.bincount(feats.example_index)
    assert (counts > 1).sum() >= 20 and counts.max() >= 3  # many multi-window questions
    # scale so that top-n candidates often fall on question tokens and spans exceed max_answer_length
    starts = [rng.normal(0, 3, len(ids)).astype(np.float32) for ids in feats.input_ids]
    ends = [rng.normal(0, 3, len(ids)).astype(np.float32) for ids in feats.input_ids]
    for n_best, max_len, min_answered in ((20, 30, 45), (5, 4, 20), (3, 1, 3)):
        ours = decode(examples, feats, starts, ends, n_best=n_best, max_answer_length=max_len)
        ref = reference_postprocess(examples, feats, starts, ends, n_best=n_best, max_answer_length=max_len)
        n_answered = 0
        for d, (preds, min_null) in zip(ours, ref, strict=True):
            assert d.null_score == pytest.approx(min_null, abs=1e-5)
            if not preds:
                assert d.best is None
                continue
            n_answered += 1
            assert d.best is not None
            assert d.best.text == preds[0]["text"]
            assert (d.best.start, d.best.end) == (preds[0]["start"], preds[0]["end"])
            assert d.best.score == pytest.approx(preds[0]["score"], abs=1e-5)
            # the candidates are the reference's ranking without repeats of a span seen from two windows
            seen, unique = set(), []
            for p in preds:
                if (p["start"], p["end"]) not in seen:
                    seen.add((p["start"], p["end"]))
                    unique.append(p)
            unique = unique[:n_best]
            assert [(c.start, c.end) for c in d.candidates] == [(p["start"], p["end"]) for p in unique]
            assert np.allclose([c.score for c in d.candidates], [p["score"] for p in unique], atol=1e-5)
            assert [c.text for c in d.candidates] == [p["text"] for p in unique]
        assert n_answered >= min_answered


def _single_window_features(tokenizer, question, context, seq=128):
    ex = QAExample(id="q", question=question, context=context)
    feats = tokenize_examples([ex], tokenizer, max_seq_length=seq, doc_stride=32, progress=False)
    return ex, feats


def _token_of(feats: QAFeatures, f: int, context: str, word: str) -> int:
    char = context.index(word)
    offs = feats.offsets[f]
    return int(np.flatnonzero((offs[:, 0] <= char) & (offs[:, 1] > char))[0])


def test_answer_only_in_second_window(tokenizer):
    context = " ".join(f"w{i}" for i in range(120)) + " the golden key lies here"
    ex = QAExample(id="q", question="Where is the key?", context=context)
    feats = tokenize_examples([ex], tokenizer, max_seq_length=64, doc_stride=16, progress=False)
    assert len(feats) >= 3
    last = len(feats) - 1
    starts = [np.zeros(len(x), np.float32) for x in feats.input_ids]
    ends = [np.zeros(len(x), np.float32) for x in feats.input_ids]
    s = _token_of(feats, last, context, "golden")
    e = _token_of(feats, last, context, "key lies")
    starts[last][s] = 10.0
    ends[last][e] = 10.0
    (d,) = decode([ex], feats, starts, ends)
    assert d.best.text == "golden key"
    assert d.best.score == pytest.approx(20.0)
    assert context[d.best.start: d.best.end] == "golden key"


def test_max_answer_length_limits_spans(tokenizer):
    context = "alpha beta gamma delta epsilon zeta eta theta"
    ex, feats = _single_window_features(tokenizer, "Which letters?", context)
    s_tok, e_tok = _token_of(feats, 0, context, "alpha"), _token_of(feats, 0, context, "theta")
    z_tok = _token_of(feats, 0, context, "zeta")
    span = e_tok - s_tok + 1  # tokens in the whole context (>= 8 words)
    assert span >= 8 and e_tok - z_tok + 1 < span
    n = len(feats.input_ids[0])
    starts, ends = np.full(n, -5.0, np.float32), np.full(n, -5.0, np.float32)
    starts[s_tok], ends[e_tok] = 10.0, 10.0  # the best pair covers the whole context
    starts[z_tok] = 3.0  # the runner-up: zeta..theta
    (long_ok,) = decode([ex], feats, [starts], [ends], max_answer_length=span)
    assert long_ok.best.text == context
    (limited,) = decode([ex], feats, [starts], [ends], max_answer_length=span - 1)
    assert limited.best.text == "zeta eta theta"
    (tight,) = decode([ex], feats, [starts], [ends], max_answer_length=1)
    assert len(tight.best.text.split()) == 1


def test_question_tokens_and_cls_are_never_answers(tokenizer):
    context = "red green blue"
    ex, feats = _single_window_features(tokenizer, "Which colour is the sky?", context)
    n = len(feats.input_ids[0])
    starts, ends = np.zeros(n, np.float32), np.zeros(n, np.float32)
    starts[:4] = 50.0  # CLS and question tokens
    ends[:4] = 50.0
    blue = _token_of(feats, 0, context, "blue")
    starts[blue], ends[blue] = 5.0, 5.0
    (d,) = decode([ex], feats, [starts], [ends])
    assert d.best.text == "blue"
    assert d.null_score == pytest.approx(100.0)


def test_v2_null_threshold_via_final_answers(tokenizer):
    context = "The lighthouse was painted white in 1901."
    ex, feats = _single_window_features(tokenizer, "When was it painted?", context)
    n = len(feats.input_ids[0])
    starts, ends = np.zeros(n, np.float32), np.zeros(n, np.float32)
    year = _token_of(feats, 0, context, "1901")
    starts[year], ends[year] = 4.0, 3.0  # span score 7
    starts[0], ends[0] = 5.0, 4.0  # null score 9 -> gap 2
    (d,) = decode([ex], feats, [starts], [ends])
    assert d.best.text == "1901"
    assert d.score_diff == pytest.approx(2.0)
    for threshold, expected in ((0.0, ""), (1.99, ""), (2.01, "1901"), (5.0, "1901")):
        preds, na = final_answers([ex], [d], version_2=True, null_threshold=threshold)
        assert preds == {"q": expected}
        assert na["q"] == pytest.approx(2.0)
    preds, _ = final_answers([ex], [d], version_2=False)
    assert preds == {"q": "1901"}  # v1 always answers
    # with several windows the null score is the smallest CLS score over them
    long_ctx = " ".join(["filler"] * 150) + " " + context
    ex2 = QAExample(id="q2", question="When was it painted?", context=long_ctx)
    feats2 = tokenize_examples([ex2], tokenizer, max_seq_length=64, doc_stride=16, progress=False)
    assert len(feats2) >= 3
    starts2 = [np.zeros(len(x), np.float32) for x in feats2.input_ids]
    ends2 = [np.zeros(len(x), np.float32) for x in feats2.input_ids]
    for i, (s, e) in enumerate(zip(starts2, ends2, strict=True)):
        s[0], e[0] = 10.0 + i, 10.0 + i
    (d2,) = decode([ex2], feats2, starts2, ends2)
    assert d2.null_score == pytest.approx(20.0)
    preds, na = final_answers([ex2], [d2], version_2=True, null_threshold=0.0)
    assert preds == {"q2": ""} and na["q2"] == pytest.approx(20.0)


def test_top_k_order_and_probabilities(tokenizer):
    context = "one two three four five six seven eight nine ten"
    ex, feats = _single_window_features(tokenizer, "Which number?", context)
    n = len(feats.input_ids[0])
    rng = np.random.default_rng(5)
    starts = rng.normal(0, 2, n).astype(np.float32)
    ends = rng.normal(0, 2, n).astype(np.float32)
    (d,) = decode([ex], feats, [starts], [ends], n_best=20, top_k=5)
    scores = [c.score for c in d.candidates]
    assert len(scores) >= 5
    assert scores == sorted(scores, reverse=True)
    probs = [c.probability for c in d.candidates]
    assert probs == sorted(probs, reverse=True)
    assert 0.99 <= sum(probs) <= 1.0 + 1e-6
    assert sum(probs[:5]) <= 1.0
    # probabilities are a softmax over the candidate scores
    raw = np.exp(np.array(scores) - max(scores))
    np.testing.assert_allclose(probs, raw / raw.sum(), rtol=1e-5)
    for c in d.candidates:
        assert context[c.start: c.end] == c.text and c.text
    assert len({(c.start, c.end) for c in d.candidates}) == len(d.candidates)
    (d1,) = decode([ex], feats, [starts], [ends], n_best=20, top_k=1)
    assert d1.best.text == d.best.text


def test_examples_without_features_or_valid_spans(tokenizer):
    context = "only words here"
    ex, feats = _single_window_features(tokenizer, "Anything?", context)
    n = len(feats.input_ids[0])
    starts, ends = np.zeros(n, np.float32), np.zeros(n, np.float32)
    (d,) = decode([ex], feats, [starts], [ends], max_answer_length=1)
    assert d.best is not None and len(d.best.text.split()) == 1  # all-zero logits still give a span
    other = QAExample(id="other", question="?", context="x")
    d_other = decode([ex, other], feats, [starts], [ends])[1]
    assert d_other.best is None and d_other.score_diff == float("inf")
    preds, na = final_answers([ex, other], decode([ex, other], feats, [starts], [ends]), version_2=True)
    assert preds["other"] == "" and na["other"] == 1e6


def test_unused_answer_field_is_ignored(tokenizer):
    context = "cats sleep a lot"
    ex = QAExample(id="q", question="What do cats do?", context=context, answers=[GoldAnswer("sleep", 5)])
    feats = tokenize_examples([ex], tokenizer, 128, 32, training=True, progress=False)
    n = len(feats.input_ids[0])
    starts, ends = np.zeros(n, np.float32), np.zeros(n, np.float32)
    starts[feats.start_positions[0]] = ends[feats.end_positions[0]] = 9.0
    (d,) = decode([ex], feats, [starts], [ends])
    assert d.best.text == "sleep"
