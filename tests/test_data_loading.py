"""Tests for qatune.data.readers: every input format, the repair/drop rules and every user-facing error.

All data is hand-written here (tiny, made-up passages) so the tests are fast and need no download; one test
reads the shared official SQuAD dev file when it is present.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from qatune.data.squad.squad_schema import declared_version, load_squad_for_scoring
from qatune.errors import ConfigError, DataError
from qatune.tasks.extractive_qa import (
    GoldAnswer,
    QAExample,
    examples_to_squad_json,
    load_qa_examples,
    load_squad_dataset_json,
)

# Never reach the network: the hub test expects the offline error. qatune.data imports datasets lazily, so
# setting this after the imports above still comes before datasets (and huggingface_hub) read it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SQUAD_DEV = Path(__file__).resolve().parents[1].parent / "shared/data/squad/dev-v1.1.json.gz"

FOX = "Foxes live in forests and fields. A red fox can run at fifty kilometres per hour."
ARCTIC = "The arctic fox grows white fur in winter and brown fur in summer."
NILE = "The Nile flows north through Egypt into the Mediterranean Sea."


def ans(context: str, text: str) -> dict[str, Any]:
    """An answer with the correct offset, so tests never hard-code character positions."""
    return {"text": text, "answer_start": context.index(text)}


def squad_v11() -> dict[str, Any]:
    """Two articles, three paragraphs, five questions; one question has two answers."""
    return {
        "version": "1.1",
        "reconstruction_note": "extra top-level keys must be ignored",
        "data": [
            {
                "title": "Foxes",
                "paragraphs": [
                    {
                        "context": FOX,
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Where do foxes live?",
                                "answers": [ans(FOX, "forests")],
                            },
                            {
                                "id": "q2",
                                "question": "How fast can a red fox run?",
                                "answers": [
                                    ans(FOX, "fifty kilometres per hour"),
                                    ans(FOX, "fifty kilometres"),
                                ],
                            },
                        ],
                    },
                    {
                        "context": ARCTIC,
                        "qas": [
                            {
                                "id": "q3",
                                "question": "What grows in winter?",
                                "answers": [ans(ARCTIC, "white fur")],
                            }
                        ],
                    },
                ],
            },
            {
                "title": "Nile",
                "paragraphs": [
                    {
                        "context": NILE,
                        "qas": [
                            {
                                "id": "q4",
                                "question": "Which way does the Nile flow?",
                                "answers": [ans(NILE, "north")],
                            },
                            {
                                "id": "q5",
                                "question": "Into which sea?",
                                "answers": [ans(NILE, "the Mediterranean Sea")],
                            },
                        ],
                    }
                ],
            },
        ],
    }


def flat_rows(document: dict[str, Any], hf_style: bool = True) -> list[dict[str, Any]]:
    """The SQuAD document as one row per question (datasets-style answers mapping, or a list of objects)."""
    rows = []
    for article in document["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers: Any = qa["answers"]
                if hf_style:
                    answers = {
                        "text": [a["text"] for a in answers],
                        "answer_start": [a["answer_start"] for a in answers],
                    }
                rows.append(
                    {
                        "id": qa["id"],
                        "title": article["title"],
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": answers,
                    }
                )
    return rows


def write_json(path: Path, document: Any) -> Path:
    text = json.dumps(document, indent=1)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = list(rows[0])
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if k == "answers" else v for k, v in row.items()})
    return path


def expected_examples() -> list[QAExample]:
    out = []
    for row in flat_rows(squad_v11(), hf_style=False):
        answers = [GoldAnswer(a["text"], a["answer_start"]) for a in row["answers"]]
        out.append(QAExample(row["id"], row["question"], row["context"], answers, row["title"], False))
    return out


def assert_clean(report: Any, questions: int = 5, version: str = "1.1") -> None:
    assert report.questions == questions
    assert report.version == version
    assert (report.repaired_answers, report.dropped_answers, report.dropped_questions) == (0, 0, 0)


# ----------------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize("name", ["train.json", "train.json.gz"])
def test_squad_json_plain_and_gzip(tmp_path: Path, name: str) -> None:
    path = write_json(tmp_path / name, squad_v11())
    examples, report = load_qa_examples(path)
    assert examples == expected_examples()
    assert_clean(report)
    assert report.source == str(path)
    assert str(path) in report.summary()


@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.gz"])
def test_jsonl_plain_and_gzip(tmp_path: Path, name: str) -> None:
    path = write_jsonl(tmp_path / name, flat_rows(squad_v11()))
    examples, report = load_qa_examples(path)
    assert examples == expected_examples()
    assert_clean(report)


def test_json_holding_json_lines_or_a_record_list(tmp_path: Path) -> None:
    """datasets' to_json writes JSON Lines under a .json name; a plain list of records is also common."""
    lines = write_jsonl(tmp_path / "lines.json", flat_rows(squad_v11()))
    records = write_json(tmp_path / "records.json", flat_rows(squad_v11(), hf_style=False))
    for path in (lines, records):
        examples, report = load_qa_examples(path)
        assert examples == expected_examples()
        assert_clean(report)


@pytest.mark.parametrize("hf_style", [True, False])
def test_csv_with_json_answers(tmp_path: Path, hf_style: bool) -> None:
    path = write_csv(tmp_path / "train.csv", flat_rows(squad_v11(), hf_style=hf_style))
    examples, report = load_qa_examples(path)
    assert examples == expected_examples()
    assert_clean(report)


def test_csv_without_id_column_gets_row_ids(tmp_path: Path) -> None:
    rows = [{k: v for k, v in row.items() if k != "id"} for row in flat_rows(squad_v11())]
    examples, report = load_qa_examples(write_csv(tmp_path / "noid.csv", rows))
    assert [e.id for e in examples] == ["row-1", "row-2", "row-3", "row-4", "row-5"]
    assert any("row-<n>" in note for note in report.notes)


def test_csv_is_impossible_column_as_text(tmp_path: Path) -> None:
    rows = flat_rows(squad_v11())[:2]
    rows[0]["is_impossible"] = "False"
    rows[1]["is_impossible"] = "True"
    rows[1]["answers"] = {"text": [], "answer_start": []}
    examples, report = load_qa_examples(write_csv(tmp_path / "v2.csv", rows))
    assert [e.is_impossible for e in examples] == [False, True]
    assert report.version == "2.0"


@pytest.mark.parametrize("hf_style", [True, False])
def test_parquet(tmp_path: Path, hf_style: bool) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(flat_rows(squad_v11(), hf_style=hf_style)), path)
    examples, report = load_qa_examples(path)
    assert examples == expected_examples()
    assert_clean(report)


def test_save_to_disk_dataset_and_dataset_dict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = flat_rows(squad_v11())
    single = tmp_path / "single"
    datasets.Dataset.from_list(rows).save_to_disk(str(single))
    examples, report = load_qa_examples(single)
    assert examples == expected_examples()
    assert_clean(report)

    both = tmp_path / "both"
    datasets.DatasetDict(
        {"validation": datasets.Dataset.from_list(rows[3:]), "train": datasets.Dataset.from_list(rows[:3])}
    ).save_to_disk(str(both))
    train, _ = load_qa_examples(both)
    assert [e.id for e in train] == ["q1", "q2", "q3"]
    validation, _ = load_qa_examples(both, split="validation")
    assert [e.id for e in validation] == ["q4", "q5"]
    first, _ = load_qa_examples(both, max_samples=1)
    assert [e.id for e in first] == ["q1"]
    with pytest.raises(
        DataError, match="no split 'test'.*train, validation|no split 'test'.*validation, train"
    ):
        load_qa_examples(both, split="test")

    only_validation = tmp_path / "only_validation"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows[3:])}).save_to_disk(
        str(only_validation)
    )
    examples, report = load_qa_examples(only_validation)
    assert [e.id for e in examples] == ["q4", "q5"]
    assert any("validation" in note for note in report.notes)


# ----------------------------------------------------------------------------------------------------
# SQuAD v2 and unanswerable questions


def test_v2_is_impossible_kept(tmp_path: Path) -> None:
    document = squad_v11()
    document["version"] = "v2.0"
    qas = document["data"][0]["paragraphs"][0]["qas"]
    for qa in qas:
        qa["is_impossible"] = False
    qas.append({"id": "q6", "question": "What colour are fox eggs?", "answers": [], "is_impossible": True})
    examples, report = load_qa_examples(write_json(tmp_path / "dev-v2.json", document))
    by_id = {e.id: e for e in examples}
    assert by_id["q6"].is_impossible and by_id["q6"].answers == []
    assert not by_id["q1"].is_impossible
    assert report.version == "2.0"
    assert report.questions == 6
    assert report.dropped_questions == 0


def test_unanswerable_variants(tmp_path: Path) -> None:
    """In a file that declares no version: [] without a flag means unanswerable (noted); a flagged question
    with answers keeps none; [] with is_impossible false is an answerable question with no answer, so it is
    dropped. (A file declaring version 1.1 refuses all three: see the next test.)"""
    document = squad_v11()
    del document["version"]
    qas = document["data"][0]["paragraphs"][0]["qas"]
    qas.append({"id": "empty", "question": "Who owns the forest?", "answers": []})
    qas.append({"id": "flagged", "question": "Who?", "answers": [ans(FOX, "forests")], "is_impossible": True})
    qas.append({"id": "contradiction", "question": "What?", "answers": [], "is_impossible": False})
    examples, report = load_qa_examples(write_json(tmp_path / "mixed.json", document))
    by_id = {e.id: e for e in examples}
    assert by_id["empty"].is_impossible and by_id["empty"].answers == []
    assert by_id["flagged"].is_impossible and by_id["flagged"].answers == []
    assert "contradiction" not in by_id
    assert report.dropped_questions == 1
    assert report.version == "2.0"
    notes = " | ".join(report.notes)
    assert "no is_impossible flag" in notes and "empty" in notes
    assert "ignored" in notes and "flagged" in notes


# ----------------------------------------------------------------------------------------------------
# max_samples


@pytest.mark.parametrize("change, what", [
    ({"answers": []}, r"has no answers \(answers: \[\]\)"),
    ({"is_impossible": True}, "is marked is_impossible"),
    ({"answers": [], "is_impossible": False}, r"has no answers"),
])
def test_declared_v11_file_refuses_an_unanswerable_question(tmp_path: Path, change: dict, what: str) -> None:
    """Issue 12 defect 10: one answers [] in a version-1.1 file used to turn the whole file into v2.0 data
    (v2 scoring with a no-answer threshold tuned on the same questions). It is now a data error naming the
    file, article, paragraph and question, for training/evaluation loading and for `qatune score` alike."""
    document = squad_v11()
    _qa(document, 1, 0, 1).update(change)
    path = write_json(tmp_path / "dev-v1.json", document)
    where = r'dev-v1\.json: data\[1\] \(title "Nile"\) paragraphs\[0\] qas\[1\] \(id "q5"\): the question '
    with pytest.raises(DataError, match=where + what + r'.*declares "version": "1\.1"'):
        load_qa_examples(path)
    with pytest.raises(DataError, match=where + what):
        load_squad_dataset_json(path)


def test_declared_version_decides_not_the_questions(tmp_path: Path) -> None:
    """A file declaring 2.0 is v2.0 data even when the first N questions are all answerable; a file
    declaring nothing is v2.0 only when some question is unanswerable."""
    document = squad_v11()
    document["version"] = "v2.0"
    _, report = load_qa_examples(write_json(tmp_path / "v2.json", document))
    assert report.version == "2.0"
    _, declared = load_squad_for_scoring(tmp_path / "v2.json")
    assert declared == "2.0"
    del document["version"]
    _, report = load_qa_examples(write_json(tmp_path / "none.json", document))
    assert report.version == "1.1"
    assert load_squad_for_scoring(tmp_path / "none.json")[1] is None
    assert [declared_version(v) for v in ("1.1", "v1.1", 1.1, "2.0", "V2.0", 2, "dev", None, True, [2])] == \
        ["1.1", "1.1", "1.1", "2.0", "2.0", "2.0", None, None, None, None]


def test_max_samples_counts_questions_across_paragraphs_and_articles(tmp_path: Path) -> None:
    path = write_json(tmp_path / "train.json", squad_v11())
    examples, report = load_qa_examples(path, max_samples=4)
    assert [e.id for e in examples] == ["q1", "q2", "q3", "q4"]  # q3: 2nd paragraph, q4: 2nd article
    assert report.questions == 4
    examples, _ = load_qa_examples(path, max_samples=100)
    assert len(examples) == 5


def test_max_samples_stops_before_later_bad_records(tmp_path: Path) -> None:
    """Records past the limit are never read, so a sample of a partly broken file still loads."""
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(flat_rows(squad_v11())[0]) + "\n{not json\n", encoding="utf-8")
    examples, _ = load_qa_examples(path, max_samples=1)
    assert [e.id for e in examples] == ["q1"]


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_max_samples_must_be_positive(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ConfigError, match="max_samples"):
        load_qa_examples(write_json(tmp_path / "train.json", squad_v11()), max_samples=bad)


# ----------------------------------------------------------------------------------------------------
# Answer repair and drops

PARIS = "Paris is the capital of France. France borders Spain."


def test_answer_repair_and_drops(tmp_path: Path) -> None:
    document = {
        "version": "1.1",
        "data": [
            {
                "title": "Paris",
                "paragraphs": [
                    {
                        "context": PARIS,
                        "qas": [
                            # wrong offset, text occurs once: repaired
                            {
                                "id": "fix",
                                "question": "Paris is what?",
                                "answers": [{"text": "capital", "answer_start": 0}],
                            },
                            # one good answer kept, an ambiguous one (France x2), an absent one and an empty one dropped
                            {
                                "id": "mixed",
                                "question": "Which country?",
                                "answers": [
                                    ans(PARIS, "France"),
                                    {"text": "France", "answer_start": 3},
                                    {"text": "Germany", "answer_start": 5},
                                    {"text": "", "answer_start": 0},
                                ],
                            },
                            # nothing usable left: question dropped
                            {
                                "id": "lost",
                                "question": "Border?",
                                "answers": [{"text": "Italy", "answer_start": 40}],
                            },
                            # negative offset is just a wrong offset
                            {
                                "id": "neg",
                                "question": "Neighbour?",
                                "answers": [{"text": "Spain", "answer_start": -1}],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    examples, report = load_qa_examples(write_json(tmp_path / "repair.json", document))
    by_id = {e.id: e for e in examples}
    assert by_id["fix"].answers == [GoldAnswer("capital", PARIS.index("capital"))]
    assert by_id["mixed"].answers == [GoldAnswer("France", PARIS.index("France"))]
    assert by_id["neg"].answers == [GoldAnswer("Spain", PARIS.index("Spain"))]
    assert "lost" not in by_id
    assert report.repaired_answers == 2
    assert report.dropped_answers == 4
    assert report.dropped_questions == 1
    assert report.questions == 3
    notes = " | ".join(report.notes)
    assert "fix" in notes and "lost" in notes
    assert "2 answer offsets repaired" in report.summary()


def test_zero_questions_left_is_an_error(tmp_path: Path) -> None:
    rows = [{"id": "a", "question": "Q?", "context": PARIS, "answers": [{"text": "Rome", "answer_start": 0}]}]
    path = write_jsonl(tmp_path / "hopeless.jsonl", rows)
    with pytest.raises(DataError, match="no questions left") as err:
        load_qa_examples(path)
    assert "hopeless.jsonl" in str(err.value)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="contains no questions") as err:
        load_qa_examples(path)
    assert "empty.jsonl" in str(err.value)


# ----------------------------------------------------------------------------------------------------
# Error messages: each names the file, the record and the field


def _qa(document: dict[str, Any], article: int = 0, paragraph: int = 0, question: int = 0) -> dict[str, Any]:
    return document["data"][article]["paragraphs"][paragraph]["qas"][question]


def _edit(change: Any) -> dict[str, Any]:
    document = squad_v11()
    change(document)
    return document


JSON_ERRORS: list[tuple[str, Any, list[str]]] = [
    ("missing_data", {"version": "1.1", "articles": []}, ["'data'", "articles"]),
    ("data_not_list", {"data": {"title": "x"}}, ["'data'", "not a list"]),
    (
        "missing_question",
        _edit(lambda d: _qa(d, 1, 0, 1).pop("question")),
        ['data[1] (title "Nile") paragraphs[0] qas[1] (id "q5")', "'question'"],
    ),
    ("empty_question", _edit(lambda d: _qa(d).update(question="   ")), ['(id "q1")', "'question'", "empty"]),
    (
        "missing_context",
        _edit(lambda d: d["data"][0]["paragraphs"][1].pop("context")),
        ["paragraphs[1] qas[0]", '"q3"', "'context'"],
    ),
    (
        "empty_context",
        _edit(lambda d: d["data"][1]["paragraphs"][0].update(context="")),
        ['"q4"', "'context'"],
    ),
    ("missing_id", _edit(lambda d: _qa(d, 0, 0, 1).pop("id")), ["paragraphs[0] qas[1]", "'id'"]),
    ("empty_id", _edit(lambda d: _qa(d, 0, 0, 1).update(id="")), ["qas[1]", "'id'"]),
    (
        "duplicate_id",
        _edit(lambda d: _qa(d, 1, 0, 0).update(id="q1")),
        ['data[1] (title "Nile") paragraphs[0] qas[0] (id "q1")', "duplicate", "data[0]"],
    ),
    (
        "string_answer_start",
        _edit(lambda d: _qa(d)["answers"][0].update(answer_start="14")),
        ['(id "q1")', "answers[0].answer_start", "'14'", "integer"],
    ),
    (
        "fractional_answer_start",
        _edit(lambda d: _qa(d, 0, 0, 1)["answers"][1].update(answer_start=3.5)),
        ['(id "q2")', "answers[1].answer_start", "integer"],
    ),
    (
        "answers_not_list",
        _edit(lambda d: _qa(d).update(answers="forests")),
        ['(id "q1")', "'answers'", "list"],
    ),
    ("answers_missing", _edit(lambda d: _qa(d).pop("answers")), ['(id "q1")', "'answers'", "missing"]),
    ("answer_item_not_object", _edit(lambda d: _qa(d).update(answers=["forests"])), ['"q1"', "answers[0]"]),
    (
        "answer_text_not_string",
        _edit(lambda d: _qa(d).update(answers=[{"text": 7, "answer_start": 0}])),
        ["text"],
    ),
    ("bad_is_impossible", _edit(lambda d: _qa(d).update(is_impossible="maybe")), ['"q1"', "is_impossible"]),
    (
        "paragraphs_missing",
        _edit(lambda d: d["data"][1].pop("paragraphs")),
        ['data[1] (title "Nile")', "paragraphs"],
    ),
    ("qas_missing", _edit(lambda d: d["data"][0]["paragraphs"][1].pop("qas")), ["paragraphs[1]", "'qas'"]),
]


@pytest.mark.parametrize(("name", "document", "expected"), JSON_ERRORS, ids=[e[0] for e in JSON_ERRORS])
def test_squad_json_errors(tmp_path: Path, name: str, document: Any, expected: list[str]) -> None:
    path = write_json(tmp_path / f"{name}.json", document)
    with pytest.raises(DataError) as err:
        load_qa_examples(path)
    message = str(err.value)
    assert f"{name}.json" in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_malformed_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json.gz"
    path.write_bytes(gzip.compress(b'{"data": [\n  {"title": "x",, "paragraphs": []}\n]}'))
    with pytest.raises(DataError) as err:
        load_qa_examples(path)
    message = str(err.value)
    assert "broken.json.gz" in message and "line 2 column" in message and "not valid JSON" in message


def test_jsonl_errors(tmp_path: Path) -> None:
    good = json.dumps(flat_rows(squad_v11())[0])
    bad_line = tmp_path / "bad_line.jsonl"
    bad_line.write_text(good + '\n{"id": "x", "question": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad_line\.jsonl: line 2: not valid JSON at column"):
        load_qa_examples(bad_line)

    not_object = tmp_path / "not_object.jsonl"
    not_object.write_text(good + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"not_object\.jsonl: line 2: expected a JSON object"):
        load_qa_examples(not_object)

    row = flat_rows(squad_v11())[1]
    row["answers"]["answer_start"] = [None, 3]
    bad_start = write_jsonl(tmp_path / "bad_start.jsonl", [flat_rows(squad_v11())[0], row])
    with pytest.raises(DataError, match=r'bad_start\.jsonl: line 2 \(id "q2"\): answers\[0\]\.answer_start'):
        load_qa_examples(bad_start)

    row = flat_rows(squad_v11())[0]
    row["answers"]["answer_start"] = [1, 2]
    uneven = write_jsonl(tmp_path / "uneven.jsonl", [row])
    with pytest.raises(
        DataError, match=r'uneven\.jsonl: line 1 \(id "q1"\): field \'answers\' has 1 texts but 2'
    ):
        load_qa_examples(uneven)

    rows = flat_rows(squad_v11())
    rows[2]["id"] = "q1"
    dupe = write_jsonl(tmp_path / "dupe.jsonl", rows)
    with pytest.raises(
        DataError, match=r'dupe\.jsonl: line 3 \(id "q1"\): duplicate id; it was first used at line 1'
    ):
        load_qa_examples(dupe)

    rows = flat_rows(squad_v11())
    del rows[1]["question"]
    no_question = write_jsonl(tmp_path / "no_question.jsonl", rows)
    with pytest.raises(DataError, match=r'no_question\.jsonl: line 2 \(id "q2"\): field \'question\''):
        load_qa_examples(no_question)


def test_csv_errors(tmp_path: Path) -> None:
    rows = flat_rows(squad_v11())
    no_context = write_csv(
        tmp_path / "no_context.csv", [{k: v for k, v in r.items() if k != "context"} for r in rows]
    )
    with pytest.raises(DataError, match=r"no_context\.csv: missing column\(s\) context"):
        load_qa_examples(no_context)

    path = write_csv(tmp_path / "bad_answers.csv", rows)
    text = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*text[:2], text[2].replace('"{""text""', '"{oops'), *text[3:]]) + "\n")
    with pytest.raises(DataError, match=r"bad_answers\.csv: row 2: field 'answers' is not valid JSON"):
        load_qa_examples(path)

    rows[0]["answers"] = 5
    not_list = write_csv(tmp_path / "not_list.csv", rows)
    with pytest.raises(
        DataError, match=r"not_list\.csv: row 1 \(id \"q1\"\): field 'answers' must be a list"
    ):
        load_qa_examples(not_list)


def test_path_and_hub_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory") as err:
        load_qa_examples(tmp_path / "missing.json")
    assert "missing.json" in str(err.value)

    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match=r"notes\.txt: unknown file type '\.txt'"):
        load_qa_examples(unknown)

    plain_dir = tmp_path / "plain_dir"
    plain_dir.mkdir()
    with pytest.raises(
        DataError, match=r"plain_dir: is a directory but not one written by datasets' save_to_disk"
    ):
        load_qa_examples(plain_dir)

    pytest.importorskip("datasets")
    with pytest.raises(DataError) as err:
        load_qa_examples("qatune-tests/no-such-dataset")
    message = str(err.value)
    assert "qatune-tests/no-such-dataset: does not exist locally" in message
    assert "Hugging Face Hub could not be reached" in message
    assert "pass its path instead" in message


def test_load_squad_dataset_json(tmp_path: Path) -> None:
    document = squad_v11()
    data = load_squad_dataset_json(write_json(tmp_path / "dev.json.gz", document))
    assert data == document["data"]

    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [}', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON at line 1 column 11"):
        load_squad_dataset_json(broken)
    with pytest.raises(DataError, match=r"nodata\.json: no top-level 'data' field"):
        load_squad_dataset_json(write_json(tmp_path / "nodata.json", {"version": "1.1"}))
    with pytest.raises(DataError, match=r"absent\.json: no such file"):
        load_squad_dataset_json(tmp_path / "absent.json")


# ----------------------------------------------------------------------------------------------------
# Back to SQuAD JSON


def test_examples_to_squad_json_round_trip(tmp_path: Path) -> None:
    document = squad_v11()
    document["version"] = "2.0"
    _qa(document, 1, 0, 1)["answers"] = []  # one unanswerable question
    examples, report = load_qa_examples(write_json(tmp_path / "orig.json", document))
    assert report.version == "2.0"

    rebuilt = examples_to_squad_json(examples, report.version)
    assert rebuilt["version"] == "2.0"
    assert [a["title"] for a in rebuilt["data"]] == ["Foxes", "Nile"]
    assert [len(a["paragraphs"]) for a in rebuilt["data"]] == [2, 1]
    assert all("is_impossible" in qa for a in rebuilt["data"] for p in a["paragraphs"] for qa in p["qas"])
    again, report_again = load_qa_examples(write_json(tmp_path / "rebuilt.json", rebuilt))
    assert again == examples
    assert report_again.version == "2.0"
    assert load_squad_dataset_json(tmp_path / "rebuilt.json") == rebuilt["data"]


def test_examples_to_squad_json_from_table_rows(tmp_path: Path) -> None:
    """Rows from a flat format regroup into articles/paragraphs, the layout the official scorer reads."""
    rows = flat_rows(squad_v11())
    examples, _ = load_qa_examples(write_jsonl(tmp_path / "rows.jsonl", rows))
    rebuilt = examples_to_squad_json(examples, "1.1")
    original = squad_v11()
    del original["reconstruction_note"]
    assert rebuilt == original


# ----------------------------------------------------------------------------------------------------
# The shared official file


def test_official_squad_dev_first_1000() -> None:
    if not SQUAD_DEV.is_file():
        pytest.skip(f"SQuAD data not found at {SQUAD_DEV}; these tests read ../shared/data/squad")
    examples, report = load_qa_examples(SQUAD_DEV, max_samples=1000)
    assert len(examples) == 1000
    assert report.questions == 1000
    assert report.version == "1.1"
    assert report.dropped_questions == 0
    assert all(e.context[a.answer_start :].startswith(a.text) for e in examples for a in e.answers)
