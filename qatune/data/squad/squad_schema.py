"""SQuAD: the schema, validation and repair rules of extractive-QA data, whatever format it comes in.

Accepted sources: SQuAD JSON (v1.1/v2.0, plain or gzip), JSON Lines, CSV, Parquet, a folder written by
``datasets`` ``save_to_disk``, or a Hugging Face Hub dataset name. The format readers
(:mod:`qatune.data.readers`) yield flat records and one validator (:class:`_Builder`) checks them, so all
formats follow the same repair/drop rules and give the same error messages (file, record, field, what
to do). This module adds what is SQuAD's own: the nested article layout, the fields and their repairs.

Records without an id in JSON Lines, CSV, Parquet, flat JSON lists and ``datasets`` folders get the id
``row-<n>``, n counting records from 1 in file order (noted in the report). SQuAD JSON questions must
carry an id, since SQuAD files are what predictions get scored against.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qatune.data.jsonio import short_repr
from qatune.data.readers import Record, RecordSchema, check_max_samples, iter_flat, open_records, read_json
from qatune.data.squad.squad_types import GoldAnswer, LoadReport, QAExample
from qatune.errors import DataError

__all__ = [
    "SQUAD_SCHEMA",
    "declared_version",
    "examples_to_squad_json",
    "load_qa_examples",
    "load_squad_dataset_json",
    "load_squad_for_scoring",
]

_EXAMPLE_IDS = 3  # how many example ids a report note lists


def _missing_data_message(label: str, document: Any) -> str:
    found = (
        f"found keys {sorted(document)[:10]}"
        if isinstance(document, dict)
        else f"found a {type(document).__name__}"
    )
    return (
        f"{label}: no top-level 'data' field ({found}). SQuAD JSON looks like "
        '{"version": ..., "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [...]}]}]}; '
        "for one question per line use a .jsonl file."
    )


def _read_document(document: Any, label: str, declared: dict[str, str] | None = None) -> Iterator[Record]:
    """SQuAD JSON's ``{"data": [articles]}``; also ``{"data": [flat records]}`` (datasets' json loader with
    field="data"). The document's ``version`` ("1.1", "v2.0") goes into ``declared["version"]`` before the
    first record."""
    if not isinstance(document, dict) or "data" not in document:
        raise DataError(_missing_data_message(label, document))
    data = document["data"]
    if not isinstance(data, list):
        raise DataError(f"{label}: field 'data' is a {type(data).__name__}, not a list of articles.")
    version = declared_version(document.get("version"))
    if version is not None and declared is not None:
        declared["version"] = version
    if data and isinstance(data[0], dict) and "paragraphs" not in data[0] and "question" in data[0]:
        yield from iter_flat(data, label, "data")
        return
    yield from _iter_articles(data, label)


def _iter_articles(data: list[Any], label: str) -> Iterator[Record]:
    for a_i, article in enumerate(data):
        if not isinstance(article, dict):
            raise DataError(
                f"{label}: data[{a_i}]: expected an article object, got {type(article).__name__}."
            )
        title = article.get("title")
        title = "" if title is None else str(title)
        a_where = f'data[{a_i}] (title "{title}")'
        paragraphs = article.get("paragraphs")
        if not isinstance(paragraphs, list):
            raise DataError(
                f"{label}: {a_where}: field 'paragraphs' is missing or not a list. "
                "Each article needs a list of {context, qas} paragraphs."
            )
        for p_i, paragraph in enumerate(paragraphs):
            p_where = f"{a_where} paragraphs[{p_i}]"
            if not isinstance(paragraph, dict):
                raise DataError(
                    f"{label}: {p_where}: expected a paragraph object, got {type(paragraph).__name__}."
                )
            qas = paragraph.get("qas")
            if not isinstance(qas, list):
                raise DataError(
                    f"{label}: {p_where}: field 'qas' is missing or not a list. Give the paragraph's questions."
                )
            for q_i, qa in enumerate(qas):
                if not isinstance(qa, dict):
                    raise DataError(f"{label}: {p_where} qas[{q_i}]: expected a question object.")
                record = {**qa, "context": paragraph.get("context"), "title": title}
                yield f"{p_where} qas[{q_i}]", record, None


SQUAD_SCHEMA = RecordSchema(
    required=("question", "context", "answers"),
    fields="id, question, context and answers",
    columns_hint="SQuAD-style tables need id, question, context and answers; title and is_impossible are optional.",
    local_sources=(
        "a SQuAD .json/.json.gz file, a .jsonl/.jsonl.gz, .csv or .parquet file with id, question, context and "
        "answers columns, or a folder written by datasets' save_to_disk"
    ),
    hub_examples="squad or squad_v2",
    json_cells={"answers": 'Write it as {"text": ["..."], "answer_start": [0]} or [{"text": "...", "answer_start": 0}].'},
    read_document=_read_document,
)


def load_qa_examples(
    source: str | os.PathLike[str], max_samples: int | None = None, split: str | None = None
) -> tuple[list[QAExample], LoadReport]:
    """Load QA examples from any accepted source and report what was repaired or dropped.

    ``max_samples`` keeps the first N questions in file order (counted before drops) and is applied while
    reading, so a small sample of a large file stays cheap. ``split`` picks the split of a saved
    ``DatasetDict`` or a hub dataset (default "train", then "validation" for a ``DatasetDict``); it is
    ignored for single files.
    """
    limit = check_max_samples(max_samples)
    label = os.fspath(source)
    declared: dict[str, str] = {}  # filled by the SQuAD JSON reader before its first record
    schema = dataclasses.replace(SQUAD_SCHEMA, read_document=functools.partial(_read_document, declared=declared))
    records, notes = open_records(label, schema, split, limit)
    builder = _Builder(label, notes, declared)
    with contextlib.closing(records) as stream:
        for where, record, fallback_id in itertools.islice(stream, limit):
            builder.add(where, record, fallback_id)
    return builder.finish()


def load_squad_dataset_json(source: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Return the raw SQuAD ``data`` article list, as the official scorers expect it (see
    :func:`load_squad_for_scoring`, which also returns the declared version)."""
    return load_squad_for_scoring(source)[0]


def load_squad_for_scoring(source: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], str | None]:
    """The raw SQuAD ``data`` article list and the file's declared version ("1.1", "2.0" or None).

    Kept separate from :func:`load_qa_examples` because the scorer must see the answers exactly as
    written (no repairs, no drops). Every field the scorer reads is checked here, so a malformed file is
    a :class:`DataError` naming the question, never a ``KeyError`` halfway through scoring.
    """
    label = os.fspath(source)
    path = Path(label).expanduser()
    if not path.is_file():
        raise DataError(f"{label}: no such file. Pass a SQuAD JSON file (.json or .json.gz).")
    document = read_json(path, label)
    if not isinstance(document, dict) or "data" not in document:
        raise DataError(_missing_data_message(label, document))
    data = document["data"]
    if not isinstance(data, list):
        raise DataError(
            f"{label}: field 'data' is a {type(data).__name__}, not a list of articles. "
            'SQuAD JSON looks like {"version": ..., "data": [{"title": ..., "paragraphs": [...]}]}.'
        )
    version = declared_version(document.get("version"))
    for where, qa, _ in _iter_articles(data, label):
        qid = qa.get("id")
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
            raise DataError(f"{label}: {where}: field 'id' is {short_repr(qid)}; every question needs a string id "
                            "(predictions are matched to questions by id).")
        where = f'{where} (id "{qid}")'
        answers = qa.get("answers", [])
        if not isinstance(answers, list) or not all(
            isinstance(a, dict) and isinstance(a.get("text"), str) for a in answers
        ):
            raise DataError(f"{label}: {where}: field 'answers' must be a list of {{text, answer_start}} objects "
                            f"whose text is a string, got {short_repr(answers)}.")
        if version == "1.1" and (qa.get("is_impossible") is True or not answers):
            raise DataError(f"{label}: {where}: {_v11_unanswerable(qa.get('is_impossible') is True)}")
    return data, version


def _v11_unanswerable(flagged: bool) -> str:
    """Why a declared-v1.1 file may not hold an unanswerable question: one such record must not turn the
    whole file into v2.0 data (v2 scoring, a no-answer threshold tuned on the same questions)."""
    what = "is marked is_impossible" if flagged else "has no answers (answers: [])"
    return (f'the question {what}, but the file declares "version": "1.1", where every question has an '
            'answer. Give its answer, remove the question, or declare "version": "2.0" if the file holds '
            "unanswerable questions.")


def examples_to_squad_json(examples: list[QAExample], version: str) -> dict[str, Any]:
    """Turn examples back into SQuAD JSON so the official scorer can score data read from any format.

    Articles are grouped by title and paragraphs by (title, context), in order of first appearance.
    ``is_impossible`` is written for every question in a v2 file and for unanswerable ones in v1.1.
    """
    is_v2 = declared_version(version) == "2.0"
    data: list[dict[str, Any]] = []
    articles: dict[str, dict[str, Any]] = {}
    paragraphs: dict[tuple[str, str], dict[str, Any]] = {}
    for example in examples:
        article = articles.get(example.title)
        if article is None:
            article = articles[example.title] = {"title": example.title, "paragraphs": []}
            data.append(article)
        paragraph = paragraphs.get((example.title, example.context))
        if paragraph is None:
            paragraph = paragraphs[(example.title, example.context)] = {"context": example.context, "qas": []}
            article["paragraphs"].append(paragraph)
        qa: dict[str, Any] = {
            "id": example.id,
            "question": example.question,
            "answers": [{"text": a.text, "answer_start": a.answer_start} for a in example.answers],
        }
        if is_v2 or example.is_impossible:
            qa["is_impossible"] = example.is_impossible
        paragraph["qas"].append(qa)
    return {"version": version, "data": data}


# ----------------------------------------------------------------------------------------------------
# Validation shared by all formats


class _FieldProblem(Exception):
    """A bad field in one record; :class:`_Builder` adds the file and record to the message."""


class _Builder:
    """Validates flat records and applies the repair/drop rules, so every format behaves the same."""

    def __init__(self, label: str, notes: list[str], declared: dict[str, str] | None = None) -> None:
        self.label = label
        self.report = LoadReport(source=label, notes=list(notes))
        self._declared = declared if declared is not None else {}
        self.examples: list[QAExample] = []
        self._seen: dict[str, str] = {}
        self._read = 0
        self._generated_ids = 0
        self._implicit_impossible: list[str] = []
        self._ignored_answers: list[str] = []
        self._repaired_ids: list[str] = []
        self._dropped_answer_ids: list[str] = []
        self._dropped_question_ids: list[str] = []

    def _fail(self, where: str, message: str) -> DataError:
        return DataError(f"{self.label}: {where}: {message}")

    def add(self, where: str, record: dict[str, Any], fallback_id: str | None) -> None:
        self._read += 1
        try:
            qid = _id_text(record.get("id"))
        except _FieldProblem as exc:
            raise self._fail(where, str(exc)) from exc
        if qid is None:
            if fallback_id is None:
                raise self._fail(
                    where,
                    "field 'id' is missing or empty. Every question needs a unique id "
                    "(predictions are matched to questions by id); add one.",
                )
            qid = fallback_id
            self._generated_ids += 1
        where = f'{where} (id "{qid}")'
        if qid in self._seen:
            raise self._fail(
                where,
                f"duplicate id; it was first used at {self._seen[qid]}. Ids must be unique: "
                "rename or remove one of the two questions.",
            )
        self._seen[qid] = where
        question = record.get("question")
        if not isinstance(question, str) or not question.strip():
            raise self._fail(
                where, "field 'question' is missing or empty. Give the question text or remove the record."
            )
        context = record.get("context")
        if not isinstance(context, str) or not context.strip():
            raise self._fail(
                where,
                "field 'context' is missing or empty. Every question needs the passage that holds its answer.",
            )
        title = record.get("title")
        if title is None:
            title = ""
        elif isinstance(title, (str, int, float)) and not isinstance(title, bool):
            title = str(title)
        else:
            raise self._fail(where, f"field 'title' is {short_repr(title)}; give the article title as text.")
        try:
            flag = _parse_flag(record.get("is_impossible"))
        except _FieldProblem as exc:
            raise self._fail(where, str(exc)) from exc
        raw_answers = record.get("answers")
        if raw_answers is None and flag is not True:
            raise self._fail(
                where,
                "field 'answers' is missing. Give a list of {text, answer_start} objects "
                "([] with is_impossible: true for an unanswerable question).",
            )
        try:
            pairs = _answer_pairs(raw_answers) if raw_answers is not None else []
        except _FieldProblem as exc:
            raise self._fail(where, str(exc)) from exc
        if self._declared.get("version") == "1.1" and (flag is True or not pairs):
            raise self._fail(where, _v11_unanswerable(flag is True))

        if flag is True or (flag is None and not pairs):
            if flag is True and pairs:
                self._ignored_answers.append(qid)
            elif flag is None:
                self._implicit_impossible.append(qid)
            self.examples.append(QAExample(qid, question, context, [], title, is_impossible=True))
            return
        answers = self._check_answers(where, qid, context, pairs)
        if not answers:
            self.report.dropped_questions += 1
            self._dropped_question_ids.append(qid)
            return
        self.examples.append(QAExample(qid, question, context, answers, title, is_impossible=False))

    def _check_answers(
        self, where: str, qid: str, context: str, pairs: list[tuple[Any, Any]]
    ) -> list[GoldAnswer]:
        """Keep answers whose offset is right, repair a unique text match, drop the rest."""
        answers: list[GoldAnswer] = []
        for i, (text, start) in enumerate(pairs):
            if not isinstance(text, str):
                raise self._fail(where, f"answers[{i}].text is {short_repr(text)}, not a string.")
            offset = _as_int(start)
            if offset is None:
                raise self._fail(
                    where,
                    f"answers[{i}].answer_start is {short_repr(start)}, not an integer. Give the character offset "
                    "where the answer text starts in the context.",
                )
            if not text.strip():
                self._drop_answer(qid)
            elif offset >= 0 and context[offset : offset + len(text)] == text:
                answers.append(GoldAnswer(text, offset))
            else:
                hits = _find_all(context, text, limit=2)
                if len(hits) == 1:
                    self.report.repaired_answers += 1
                    if not self._repaired_ids or self._repaired_ids[-1] != qid:
                        self._repaired_ids.append(qid)
                    answers.append(GoldAnswer(text, hits[0]))
                else:
                    self._drop_answer(qid)
        return answers

    def _drop_answer(self, qid: str) -> None:
        self.report.dropped_answers += 1
        if not self._dropped_answer_ids or self._dropped_answer_ids[-1] != qid:
            self._dropped_answer_ids.append(qid)

    def finish(self) -> tuple[list[QAExample], LoadReport]:
        report = self.report
        if not self.examples:
            if self._read == 0:
                raise DataError(
                    f"{self.label}: contains no questions. Check that it holds SQuAD-style data "
                    "(id, question, context, answers)."
                )
            raise DataError(
                f"{self.label}: no questions left after loading: all {self._read} questions read were dropped "
                f"({report.dropped_answers} answers had empty text or text not found once in the context). "
                "Fix the answer texts and answer_start offsets."
            )
        report.questions = len(self.examples)
        report.version = self._declared.get("version") or (
            "2.0" if any(e.is_impossible for e in self.examples) else "1.1")
        notes = report.notes
        if self._generated_ids:
            notes.append(
                f"{self._generated_ids} records had no id and were given row-<n> ids (n counts from 1)"
            )
        if self._implicit_impossible:
            notes.append(
                f"{len(self._implicit_impossible)} questions with answers [] and no is_impossible flag were treated "
                f"as unanswerable{_ids(self._implicit_impossible)}"
            )
        if self._ignored_answers:
            notes.append(
                f"{len(self._ignored_answers)} questions marked is_impossible listed answers; those answers were "
                f"ignored{_ids(self._ignored_answers)}"
            )
        if report.repaired_answers:
            notes.append(
                f"{report.repaired_answers} answers had an answer_start not pointing at their text and were moved to "
                f"the text's only occurrence in the context{_ids(self._repaired_ids)}"
            )
        if report.dropped_answers:
            notes.append(
                f"{report.dropped_answers} answers dropped: empty text, or text absent from or repeated in the "
                f"context with a wrong answer_start{_ids(self._dropped_answer_ids)}"
            )
        if report.dropped_questions:
            notes.append(
                f"{report.dropped_questions} answerable questions dropped: no usable answer left"
                f"{_ids(self._dropped_question_ids)}"
            )
        return self.examples, report


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:_EXAMPLE_IDS])
    return f" (e.g. {shown}{', ...' if len(ids) > _EXAMPLE_IDS else ''})"


def _id_text(value: Any) -> str | None:
    """The id as text; None when absent or empty. Lists, objects and non-finite numbers are refused."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return None  # an empty cell in a table
        raise _FieldProblem(f"field 'id' is {value}; give a string or a whole number.")
    if not isinstance(value, (str, int, float)):
        raise _FieldProblem(f"field 'id' is {short_repr(value)}; give a string or a whole number.")
    text = str(value)
    return text if text.strip() else None


def declared_version(value: Any) -> str | None:
    """A SQuAD file's ``version`` field as "1.1" or "2.0" ("v2.0", 2 and "2.0" alike); None if absent or
    not a SQuAD version, in which case the questions decide (any unanswerable one makes the data v2.0)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = str(value).strip().lstrip("vV")
    if text[:1] == "1":
        return "1.1"
    if text[:1] == "2":
        return "2.0"
    return None


def _parse_flag(value: Any) -> bool | None:
    """is_impossible as bool, or None when absent; accepts CSV spellings such as "True"/"0"."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, float) and math.isnan(value):  # an empty cell in a table
        return None
    if isinstance(value, str):
        lowered = value.strip().lower()
        if not lowered:
            return None
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
    raise _FieldProblem(f"field 'is_impossible' is {short_repr(value)}; use true or false.")


def _answer_pairs(value: Any) -> list[tuple[Any, Any]]:
    """(text, answer_start) pairs from a list of objects or a datasets-style mapping of two lists."""
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
        if not isinstance(texts, (list, tuple)) or not isinstance(starts, (list, tuple)):
            raise _FieldProblem(
                "field 'answers' must be a list of {text, answer_start} objects, or a mapping whose 'text' and "
                f"'answer_start' are lists; got a mapping with text={short_repr(texts)}. Wrap a single answer in [ ]."
            )
        if len(texts) != len(starts):
            raise _FieldProblem(
                f"field 'answers' has {len(texts)} texts but {len(starts)} answer_start values; "
                "they must pair up one to one."
            )
        return list(zip(texts, starts, strict=True))
    if isinstance(value, (list, tuple)):
        pairs = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or "text" not in item or "answer_start" not in item:
                raise _FieldProblem(
                    f"answers[{i}] must be an object with 'text' and 'answer_start', got {short_repr(item)}."
                )
            pairs.append((item["text"], item["answer_start"]))
        return pairs
    raise _FieldProblem(
        f"field 'answers' must be a list of {{text, answer_start}} objects (or a "
        f'{{"text": [...], "answer_start": [...]}} mapping), got {type(value).__name__} {short_repr(value)}.'
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _find_all(context: str, text: str, limit: int) -> list[int]:
    """Start offsets of ``text`` in ``context`` (overlaps included), stopping after ``limit`` hits."""
    hits: list[int] = []
    start = context.find(text)
    while start != -1 and len(hits) < limit:
        hits.append(start)
        start = context.find(text, start + 1)
    return hits
