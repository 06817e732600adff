"""The in-memory SQuAD record (question, context, gold answers) the QA tasks read and score."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from qatune.errors import DataError


@dataclass
class GoldAnswer:
    """A labelled answer in the data (the predictor's output is :class:`~qatune.tasks.extractive_qa.predictor.Answer`)."""

    text: str
    answer_start: int


@dataclass
class QAExample:
    """One question over one context. ``answers`` is empty for unanswerable (SQuAD v2) questions."""

    id: str
    question: str
    context: str
    answers: list[GoldAnswer] = field(default_factory=list)
    title: str = ""
    is_impossible: bool = False


@dataclass
class LoadReport:
    """What the loader did to the data, so users see repairs and drops instead of silent changes."""

    source: str
    questions: int = 0
    repaired_answers: int = 0
    dropped_answers: int = 0
    dropped_questions: int = 0
    version: str = "1.1"  # "2.0" when any question is unanswerable
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.questions} questions from {self.source} (SQuAD v{self.version} style)"]
        if self.repaired_answers:
            parts.append(f"{self.repaired_answers} answer offsets repaired")
        if self.dropped_answers:
            parts.append(f"{self.dropped_answers} answers dropped (empty, or text not found once in the context)")
        if self.dropped_questions:
            parts.append(f"{self.dropped_questions} questions dropped (no usable answer left)")
        text = "; ".join(parts)
        if self.notes:  # which ids were repaired/dropped, and anything else the loader decided
            text += ". Details: " + "; ".join(self.notes)
        return text


# -- the predict/serve schema both QA tasks answer with (request: question + context; response: Answer) --

@dataclass
class Answer:
    text: str
    score: float  # probability among the n-best spans (or of no-answer)
    start: int  # character offsets in the context; -1 for no answer
    end: int
    no_answer: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_request(payload: Any, where: str) -> tuple[str, str]:
    """``{"question": ..., "context": ...}`` (or a (question, context) pair) -> the pair; DataError naming
    ``where`` and the field (``qatune predict`` passes its flags' strings, ``--input`` its JSON lines)."""
    if isinstance(payload, dict):
        for key in ("question", "context"):
            if key not in payload or payload[key] is None:
                raise DataError(f"{where}: field '{key}' is missing")
        question, context = payload["question"], payload["context"]
    elif isinstance(payload, (tuple, list)) and len(payload) == 2:
        question, context = payload
    else:
        raise DataError(f"{where}: expected a (question, context) pair, got {type(payload).__name__}")
    for key, value in (("question", question), ("context", context)):
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(f"{where}: field '{key}' is empty")
    return question, context


def examples_from_pairs(pairs: Sequence[Any]) -> list[QAExample]:
    """Unlabelled examples (ids ``"0"``, ``"1"``, ...) for a predictor's ``answer_batch``: each item must be a
    (question, context) pair, checked by :func:`parse_request`; DataError naming ``item N``."""
    examples = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)):
            raise DataError(f"item {i}: expected a (question, context) pair, got {type(pair).__name__}")
        question, context = parse_request(pair, f"item {i}")
        examples.append(QAExample(id=str(i), question=question, context=context))
    return examples
