"""The ``qa:`` config section: windowing over long contexts, answer decoding, SQuAD v2 no-answer.

These keys were top-level before sections existed; ``doc_stride: 64`` and ``--doc-stride 64`` still
work and land here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qatune.errors import ConfigError
from qatune.ranges import Range

# special tokens a question/context pair adds: 3 for BERT ([CLS] q [SEP] c [SEP]), 4 for RoBERTa
_PAIR_SPECIAL_TOKENS = 4
_DEFAULT_STRIDE = 128


# what makes sense for each value (named by the flat key, as the user usually gives it)
RANGES: dict[str, Range] = {
    "max_seq_length": Range(_PAIR_SPECIAL_TOKENS + 2,
                            why="tokens per window: special tokens, question and context must fit"),
    "n_best": Range(1, why="start/end candidates kept per window"),
    "max_answer_length": Range(1, why="the longest answer in tokens"),
}


@dataclass
class QAOptions:
    """The ``qa:`` section; each field is also a ``qatune train`` flag (``--doc-stride``), help from its metadata."""

    # not given and max_seq_length too short for it: see auto_doc_stride
    doc_stride: int = field(default=_DEFAULT_STRIDE, metadata={"help": "overlap between windows (128)"})
    n_best: int = field(default=20, metadata={"help": "start/end candidates kept per window (20)"})
    max_answer_length: int = field(default=30, metadata={"help": "longest answer in tokens (30)"})
    null_threshold: float | None = field(default=None, metadata={
        "help": "SQuAD v2 no-answer threshold (default: tuned on eval)"})
    version_2: bool | None = field(default=None, metadata={
        "help": "true/false: SQuAD v2 no-answer training (default: detected from the data)"})


def max_doc_stride(max_seq_length: int) -> int:
    """Largest stride a window can have: besides the overlap it needs the special tokens, at least one
    question token and one new context token (the tokenizer aborts with a Rust panic otherwise)."""
    return max_seq_length - _PAIR_SPECIAL_TOKENS - 2


def auto_doc_stride(max_seq_length: Any, default: int = _DEFAULT_STRIDE) -> Any:
    """The documented default (128) where it leaves room for a full 64-token question, else a quarter of
    the window (128 -> 32), so ``max_seq_length=128`` alone just works."""
    from qatune.tasks.extractive_qa.features import MAX_QUERY_TOKENS

    if not isinstance(max_seq_length, int) or default + MAX_QUERY_TOKENS + _PAIR_SPECIAL_TOKENS < max_seq_length:
        return default
    return max(0, min(default, max_seq_length // 4, max_doc_stride(max_seq_length)))


def resolve_options(values: dict[str, Any], max_seq_length: int) -> QAOptions:
    """Checked options; ``doc_stride`` not given follows ``max_seq_length`` (see :func:`auto_doc_stride`)."""
    values = dict(values)
    if "doc_stride" not in values:
        values["doc_stride"] = auto_doc_stride(max_seq_length)
    options = QAOptions(**values)
    for name, allowed in RANGES.items():
        allowed.check(name, max_seq_length if name == "max_seq_length" else getattr(options, name))
    limit = max_doc_stride(max_seq_length)  # >= 0: max_seq_length is in range
    if not 0 <= options.doc_stride <= limit:
        raise ConfigError(f"doc_stride must be in [0, {limit}] for max_seq_length={max_seq_length} (each "
                          f"window needs special tokens, the question and new context beyond the overlap), got "
                          f"{options.doc_stride}; lower doc_stride (e.g. doc_stride={max_seq_length // 4}) or "
                          "raise max_seq_length")
    return options
