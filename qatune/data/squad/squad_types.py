"""The in-memory SQuAD record (question, context, gold answers) the QA tasks read and score."""

from __future__ import annotations

from dataclasses import dataclass, field


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
