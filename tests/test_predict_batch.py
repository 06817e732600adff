"""Tests for ``qatune predict``: JSONL batch mode (--input/--output, progress, ids, bad lines) and the
single-question mode it must keep. A tiny LoRA run is trained once for the module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import qatune
from qatune.cli import main

SAMPLE = Path(qatune.__file__).resolve().parent / "resources" / "sample"
FOX = "Foxes live in forests and fields. A red fox can run at fifty kilometres per hour."
NILE = "The Nile flows north through Egypt into the Mediterranean Sea."


@pytest.fixture(scope="module")
def run_dir(tiny_lora_run: Path) -> Path:
    return tiny_lora_run


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_batch_mode_writes_one_answer_per_line(run_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    src = write_lines(tmp_path / "questions.jsonl", [
        {"id": "fox-1", "question": "Where do foxes live?", "context": FOX},
        {"id": 7, "question": "How fast can a red fox run?", "context": FOX},
        "",  # blank lines are skipped
        {"question": "Where does the Nile flow?", "context": NILE},  # no id: the line number
    ])
    out = tmp_path / "out" / "answers.jsonl"
    assert main(["predict", str(run_dir), "--input", str(src), "--output", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "answering" in err  # the progress bar
    assert "answered 3 questions" in err and str(out) in err
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["fox-1", 7, 4]
    contexts = [FOX, FOX, NILE]
    for row, ctx in zip(rows, contexts, strict=True):
        assert set(row) == {"id", "answer", "score", "start", "end", "no_answer"}
        assert ctx[row["start"]: row["end"]] == row["answer"]
        assert 0.0 <= row["score"] <= 1.0
    pipeline = qatune.load(str(run_dir), device="cpu")
    expected = pipeline.answer_batch([("Where do foxes live?", FOX), ("How fast can a red fox run?", FOX),
                                      ("Where does the Nile flow?", NILE)])
    assert [r["answer"] for r in rows] == [a.text for a in expected]
    assert not list(out.parent.glob("*.tmp*"))  # the temporary file was renamed


def test_batch_mode_top_k_to_stdout(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_lines(tmp_path / "q.jsonl", [{"id": "a", "question": "Where do foxes live?", "context": FOX}])
    assert main(["predict", str(run_dir), "--input", str(src), "--top-k", "3", "--no-progress"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 1 and rows[0]["id"] == "a"
    answers = rows[0]["answers"]
    assert 1 <= len(answers) <= 3 and answers[0]["text"] == rows[0]["answer"]
    assert all(FOX[a["start"]: a["end"]] == a["text"] for a in answers)
    assert "answering" not in captured.err


BAD_LINES = [  # (id, second line of the file, words in the error)
    ("invalid json", '{"question": "q", "context": ', "line 2: not valid JSON"),
    ("not an object", '["q", "c"]', "line 2: expected a JSON object"),
    ("missing context", {"question": "q"}, "line 2: field 'context' is missing"),
    ("missing question", {"context": "c"}, "line 2: field 'question' is missing"),
    ("number question", {"question": 3, "context": "c"}, "line 2: field 'question' must be a string"),
    ("empty context", {"question": "q", "context": "  "}, "line 2: field 'context' is empty"),
    ("bad id", {"id": [1], "question": "q", "context": "c"}, "line 2: field 'id' must be a string or a number"),
    ("duplicate id", {"id": "a", "question": "q", "context": "c"}, "line 2: id 'a' was already used on line 1"),
]


@pytest.mark.parametrize("line,words", [b[1:] for b in BAD_LINES], ids=[b[0] for b in BAD_LINES])
def test_bad_line_is_named(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: Any,
                           words: str) -> None:
    src = write_lines(tmp_path / "in.jsonl", [{"id": "a", "question": "q", "context": "c"}, line])
    out = tmp_path / "answers.jsonl"
    assert main(["predict", str(run_dir), "--input", str(src), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{src} {words}" in err, err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("answers.jsonl.tmp*"))


def test_non_utf8_and_missing_input(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "latin1.jsonl"
    src.write_bytes(b'{"question": "q", "context": "c"}\n{"question": "caf\xe9", "context": "c"}\n')
    assert main(["predict", str(run_dir), "--input", str(src)]) == 2
    assert "line 2: not UTF-8" in capsys.readouterr().err
    assert main(["predict", str(run_dir), "--input", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_flag_combinations(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_lines(tmp_path / "q.jsonl", [{"question": "q", "context": "c"}])
    assert main(["predict", str(run_dir), "--input", str(src), "--question", "q"]) == 2
    assert "drop --question" in capsys.readouterr().err
    assert main(["predict", str(run_dir), "--question", "q", "--context", "c", "--output", "x.jsonl"]) == 2
    assert "--output is for batch mode" in capsys.readouterr().err
    assert main(["predict", str(run_dir), "--input", str(src), "--output", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["predict", str(run_dir), "--input", str(src), "--top-k", "0"]) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err


def test_single_question_mode_is_unchanged(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(run_dir), "--question", "Where do foxes live?", "--context", FOX]) == 0
    best = json.loads(capsys.readouterr().out)
    assert set(best) == {"text", "score", "start", "end", "no_answer"}
    assert FOX[best["start"]: best["end"]] == best["text"]
    article = tmp_path / "article.txt"
    article.write_text(FOX, encoding="utf-8")
    assert main(["predict", str(run_dir), "--question", "Where do foxes live?", "--context-file", str(article),
                 "--top-k", "2"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert isinstance(answers, list) and answers[0]["text"] == best["text"]
    assert main(["predict", str(run_dir), "--context", FOX]) == 2
    assert "give --question" in capsys.readouterr().err
