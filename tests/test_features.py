"""SQuAD features: labels, windows, the on-disk cache, batching and padding, with the real MiniLM tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE

from qatune.tasks.extractive_qa import GoldAnswer, QAExample, load_qa_examples
from qatune.tasks.extractive_qa import features as F

SEQ, STRIDE = 128, 32


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def train_examples() -> list[QAExample]:
    return load_qa_examples(SAMPLE / "train.json")[0]


@pytest.fixture(scope="module")
def train_features(train_examples, tokenizer) -> F.QAFeatures:
    return F.tokenize_examples(train_examples, tokenizer, SEQ, STRIDE, training=True, progress=False)


def _context_tokens(feats: F.QAFeatures, i: int) -> np.ndarray:
    return np.flatnonzero(feats.offsets[i][:, 0] >= 0)


def test_every_label_decodes_to_the_gold_answer(train_examples, train_features, tokenizer):
    feats = train_features
    assert len(feats) > len(train_examples)  # some contexts need two windows at 128 tokens
    assert set(feats.example_index.tolist()) == set(range(len(train_examples)))
    answered = set()
    n_cls = 0
    for i in range(len(feats)):
        ex = train_examples[feats.example_index[i]]
        gold = ex.answers[0]
        ids, offs = feats.input_ids[i], feats.offsets[i]
        assert len(ids) <= SEQ and len(offs) == len(ids)
        start, end = int(feats.start_positions[i]), int(feats.end_positions[i])
        ctx = _context_tokens(feats, i)
        if start == 0 and end == 0:  # CLS: the answer is not fully inside this window
            assert ids[0] == tokenizer.cls_token_id
            lo, hi = offs[ctx[0], 0], offs[ctx[-1], 1]
            assert not (lo <= gold.answer_start and gold.answer_start + len(gold.text) <= hi)
            n_cls += 1
            continue
        assert ctx[0] <= start <= end <= ctx[-1]
        assert ex.context[offs[start, 0]: offs[end, 1]] == gold.text
        answered.add(int(feats.example_index[i]))
    assert answered == set(range(len(train_examples)))  # every question is labelled in some window
    assert 0 < n_cls < len(feats) // 2


def test_long_contexts_make_overlapping_windows(train_examples, train_features):
    feats = train_features
    multi = [e for e, n in enumerate(np.bincount(feats.example_index)) if n > 1]
    assert len(multi) >= 10
    for e in multi:
        windows = np.flatnonzero(feats.example_index == e)
        assert list(windows) == list(range(windows[0], windows[-1] + 1))  # consecutive features
        spans = [feats.offsets[i][_context_tokens(feats, i)] for i in windows]
        for a, b in zip(spans, spans[1:], strict=False):
            assert len(a) > STRIDE
            # the next window starts exactly `doc_stride` context tokens before this one ends
            np.testing.assert_array_equal(a[-STRIDE:], b[:STRIDE])
        covered = np.concatenate(spans)
        context = train_examples[e].context
        assert covered[:, 0].min() == len(context) - len(context.lstrip())
        assert covered[:, 1].max() == len(context.rstrip())
        # the question is repeated in each window: identical token prefix up to the first context token
        firsts = [feats.input_ids[i][: _context_tokens(feats, i)[0]] for i in windows]
        for p in firsts[1:]:
            np.testing.assert_array_equal(p, firsts[0])


def test_unanswerable_v2_questions_get_cls_labels(tokenizer):
    examples, report = load_qa_examples(SAMPLE / "dev-v2.json")
    assert report.version == "2.0"
    feats = F.tokenize_examples(examples, tokenizer, SEQ, STRIDE, training=True, progress=False)
    impossible = {i for i, ex in enumerate(examples) if not ex.answers}
    assert len(impossible) == 12
    n = 0
    for i in range(len(feats)):
        if int(feats.example_index[i]) in impossible:
            assert (feats.start_positions[i], feats.end_positions[i]) == (0, 0)
            n += 1
    assert n >= len(impossible)
    answerable_labelled = {int(feats.example_index[i]) for i in range(len(feats)) if feats.start_positions[i] > 0}
    assert answerable_labelled == set(range(len(examples))) - impossible


def test_answer_in_second_window_only(tokenizer):
    filler = " ".join(f"word{i}" for i in range(150))
    context = filler + " The treasure is buried under the old oak tree."
    ex = QAExample(id="q", question="Where is the treasure?", context=context,
                   answers=[GoldAnswer("the old oak tree", context.index("the old oak tree"))])
    feats = F.tokenize_examples([ex], tokenizer, SEQ, STRIDE, training=True, progress=False)
    assert len(feats) >= 3
    labels = list(zip(feats.start_positions.tolist(), feats.end_positions.tolist(), strict=True))
    assert labels[0] == (0, 0)
    s, e = labels[-1]
    assert s > 0 and context[feats.offsets[-1][s, 0]: feats.offsets[-1][e, 1]] == "the old oak tree"


def test_long_questions_are_clipped_so_the_context_fits(tokenizer):
    question = "why " * 200 + "?"
    context = "A short context about nothing in particular."
    ex = QAExample(id="q", question=question, context=context, answers=[GoldAnswer("nothing", context.index("nothing"))])
    feats = F.tokenize_examples([ex], tokenizer, SEQ, STRIDE, training=True, progress=False)
    assert len(feats) == 1
    ctx = _context_tokens(feats, 0)
    assert ctx[0] == F.MAX_QUERY_TOKENS + 2  # [CLS] + 64 question tokens + [SEP]
    assert context[feats.offsets[0][feats.start_positions[0], 0]: feats.offsets[0][feats.end_positions[0], 1]] \
        == "nothing"


@pytest.mark.parametrize("seq,stride", [(128, 64), (64, 16), (192, 128)])
def test_long_questions_fit_short_windows_with_a_large_stride(tokenizer, seq, stride):
    """The tokenizer panics when a window has no more than doc_stride context tokens: clip the question more."""
    question = "why " * 100 + "?"
    context = " ".join(f"word{i}" for i in range(150)) + " the answer is here"
    ex = QAExample(id="q", question=question, context=context, answers=[GoldAnswer("here", context.index("here"))])
    feats = F.tokenize_examples([ex], tokenizer, seq, stride, training=True, progress=False)
    assert len(feats) >= 2
    for i in range(len(feats)):
        assert len(feats.input_ids[i]) <= seq
        assert len(_context_tokens(feats, i)) > stride or i == len(feats) - 1
    last = len(feats) - 1
    s, e = feats.start_positions[last], feats.end_positions[last]
    assert context[feats.offsets[last][s, 0]: feats.offsets[last][e, 1]] == "here"


def test_stride_without_room_for_the_question_is_a_config_error(tokenizer):
    from qatune.errors import ConfigError

    ex = QAExample(id="q", question="Why?", context="Because.")
    with pytest.raises(ConfigError, match="doc_stride"):
        F.tokenize_examples([ex], tokenizer, 40, 36, progress=False)


def test_features_cache_hit_and_miss(train_examples, tokenizer, tmp_path, monkeypatch):
    examples = train_examples[:20]
    first = F.build_features(examples, tokenizer, SEQ, STRIDE, training=True, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("qa-*.npz"))
    assert len(files) == 1

    def boom(*args, **kwargs):
        raise AssertionError("tokenize_examples called although the features are cached")

    monkeypatch.setattr(F, "tokenize_examples", boom)
    again = F.build_features(examples, tokenizer, SEQ, STRIDE, training=True, cache_dir=tmp_path, progress=False)
    assert len(again) == len(first)
    for name in ("input_ids", "token_type_ids", "offsets"):
        for a, b in zip(getattr(first, name), getattr(again, name), strict=True):
            np.testing.assert_array_equal(a, b)
    for name in ("example_index", "start_positions", "end_positions"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))

    # any change of the window settings, the labels or the data is a miss
    for kwargs in (dict(max_seq_length=SEQ + 32), dict(doc_stride=STRIDE + 16), dict(training=False)):
        args = dict(max_seq_length=SEQ, doc_stride=STRIDE, training=True) | kwargs
        with pytest.raises(AssertionError, match="cached"):
            F.build_features(examples, tokenizer, cache_dir=tmp_path, progress=False, **args)
    with pytest.raises(AssertionError, match="cached"):
        F.build_features(examples[:19], tokenizer, SEQ, STRIDE, training=True, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("qa-*"))) == 1  # no temp files left behind


def test_cache_key_ignores_the_tokenizers_call_state(train_examples, tokenizer, tmp_path, monkeypatch):
    """transformers leaves the last call's truncation settings on the backend tokenizer: not part of the key."""
    examples = train_examples[:3]
    fingerprint = F.tokenizer_fingerprint(tokenizer)
    F.build_features(examples, tokenizer, SEQ, STRIDE, training=True, cache_dir=tmp_path, progress=False)
    tokenizer("some text", "other text", truncation="only_second", max_length=17, stride=3,
              return_overflowing_tokens=True, padding="max_length")
    assert F.tokenizer_fingerprint(tokenizer) == fingerprint
    monkeypatch.setattr(F, "tokenize_examples", lambda *a, **k: pytest.fail("cache miss"))
    F.build_features(examples, tokenizer, SEQ, STRIDE, training=True, cache_dir=tmp_path, progress=False)


def test_damaged_cache_file_is_rebuilt(train_examples, tokenizer, tmp_path):
    examples = train_examples[:5]
    first = F.build_features(examples, tokenizer, SEQ, STRIDE, training=True, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("qa-*.npz")
    path.write_bytes(b"not an npz file")
    again = F.build_features(examples, tokenizer, SEQ, STRIDE, training=True, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(np.concatenate(first.input_ids), np.concatenate(again.input_ids))
    assert F.QAFeatures.load(path).example_index.tolist() == first.example_index.tolist()


@pytest.mark.parametrize("group", [True, False])
def test_length_grouped_batches_cover_each_index_once(group):
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 128, size=1003)
    batches = F.length_grouped_batches(lengths, 16, seed=7, group=group, megabatch_factor=5)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 16 for b in batches)
    assert sum(len(b) < 16 for b in batches) <= (len(lengths) // 80 + 1 if group else 1)
    assert batches == F.length_grouped_batches(lengths, 16, seed=7, group=group, megabatch_factor=5)
    assert batches != F.length_grouped_batches(lengths, 16, seed=8, group=group, megabatch_factor=5)

    def padding(bs):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in bs)

    if group:  # grouping by length cuts padding a lot against random batches
        random_batches = F.length_grouped_batches(lengths, 16, seed=7, group=False)
        assert padding(batches) < 0.25 * padding(random_batches)


def test_collate_pads_to_a_multiple_of_8(train_features, tokenizer):
    feats = train_features
    lengths = feats.lengths
    idx = [int(np.argmin(lengths)), int(np.argmax(lengths)), 3]
    for indices in ([int(np.argmin(lengths))], idx):
        batch = F.collate(feats, indices, tokenizer.pad_token_id, with_labels=True)
        ids = batch["input_ids"]
        longest = int(lengths[indices].max())
        assert ids.shape == (len(indices), -(-longest // 8) * 8)
        assert ids.shape[1] % 8 == 0 and ids.shape[1] - longest < 8
        for row, i in enumerate(indices):
            n = int(lengths[i])
            assert batch["attention_mask"][row].sum() == n
            assert ids[row, :n].tolist() == feats.input_ids[i].tolist()
            assert (ids[row, n:] == tokenizer.pad_token_id).all()
            assert batch["token_type_ids"][row, :n].tolist() == feats.token_type_ids[i].tolist()
            assert (batch["token_type_ids"][row, n:] == 0).all()
            assert batch["token_type_ids"][row, :n].sum() > 0  # the context segment is type 1
        assert batch["start_positions"].tolist() == feats.start_positions[indices].tolist()
        assert batch["end_positions"].tolist() == feats.end_positions[indices].tolist()
    batch = F.collate(feats, [0, 1], tokenizer.pad_token_id, pad_to_multiple_of=1)
    assert batch["input_ids"].shape[1] == lengths[[0, 1]].max()
    assert "start_positions" not in batch


def test_sorted_batches_cover_each_index_once():
    lengths = np.array([5, 9, 1, 9, 3, 7, 2])
    batches = list(F.sorted_batches(lengths, 3))
    assert sorted(i for b in batches for i in b) == list(range(7))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)


def test_sorted_batches_min_fill_bounds_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(90, 385, size=200)
    batches = list(F.sorted_batches(lengths, 32, min_fill=0.9))
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert len(b) <= 32
        assert lengths[b].min() >= 0.9 * lengths[b].max()  # at most 10% of any row is padding
    # a server-sized micro-batch of random lengths is split; without min_fill it is one padded batch
    micro = np.array([384, 120, 250, 384, 100, 300, 130, 260])
    assert len(list(F.sorted_batches(micro, 32))) == 1
    split = list(F.sorted_batches(micro, 32, min_fill=0.9))
    assert split == [[0, 3], [5], [7, 2], [6, 1], [4]]
    padded = sum(len(b) * micro[b].max() for b in split)
    assert padded <= 1.1 * micro.sum()  # vs 3,072 padded tokens for one batch of 1,928 real ones
    assert padded < 0.65 * len(micro) * micro.max()
    # what the runners use: the bound on CPU only
    assert F.inference_batches(micro, 32, on_cpu=True) == split
    assert F.inference_batches(micro, 32, on_cpu=False) == [[0, 3, 5, 7, 2, 6, 1, 4]]
