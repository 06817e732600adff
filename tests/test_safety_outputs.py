"""The write rule for single output files and reports (issue 12): ``qatune predict --output`` and
``qatune report``.

``predict --output`` is never the input file (by path, by symlink or by hard link), never a file inside the
run or the base model it reads, never an existing file without ``--overwrite``, and never, even with
``--overwrite``, a file that is not an answers file qatune wrote; the answers are written to a temporary file
and renamed, so an interrupted run leaves the previous answers byte-identical. ``qatune report`` writes only
into a qatune comparison folder. Data-loss tests hash every file before and after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_error, cli, digests

from qatune.cli import predict_cmd
from qatune.compare import report as report_mod
from qatune.compare import runner
from qatune.rundir import KNOWN_NAMES
from qatune.tasks.extractive_qa.predictor import QAPipeline

pytestmark = pytest.mark.usefixtures("one_thread")
FOX = "Foxes live in forests and fields. A red fox can run at fifty kilometres per hour."
NILE = "The Nile flows north through Egypt into the Mediterranean Sea."
QUESTIONS = [{"id": "fox", "question": "Where do foxes live?", "context": FOX},
             {"id": "nile", "question": "Where does the Nile flow?", "context": NILE}]



def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def predict(capsys: pytest.CaptureFixture[str], run: Path, src: Path, out: Path | str, *extra: str
            ) -> tuple[int, str, str]:
    return cli(capsys, "predict", run, "--input", src, "--output", out, "--device", "cpu", "--no-progress", *extra)


# -- predict --output ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["same path", "other spelling", "symlink", "hard link"])
def test_predict_output_is_the_input(tiny_lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch, spelling: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    src = write_jsonl(tmp_path / "data" / "questions.jsonl", QUESTIONS)
    out: Path | str = {"same path": src, "other spelling": "data/../data/./questions.jsonl",
                       "symlink": tmp_path / "link.jsonl", "hard link": tmp_path / "hard.jsonl"}[spelling]
    if spelling == "symlink":
        (tmp_path / "link.jsonl").symlink_to(src)
    if spelling == "hard link":
        os.link(src, tmp_path / "hard.jsonl")
    before = digests(tmp_path)
    for extra in ((), ("--overwrite",)):
        rc, _, err = predict(capsys, tiny_lora_run, src, out, *extra)
        assert_clean_error(rc, err, "is the input file", "would destroy the questions", "choose another --output")
        assert digests(tmp_path) == before


def test_predict_refuses_an_existing_foreign_file(tiny_lora_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("Chapter 1\nthree years of work\n")
    notes = tmp_path / "notes.jsonl"  # JSON Lines, but not answers
    write_jsonl(notes, [{"id": 1, "text": "call Ana"}])
    before = digests(tmp_path)
    rc, _, err = predict(capsys, tiny_lora_run, src, thesis)
    assert_clean_error(rc, err, f"--output {thesis} already exists", "pass --overwrite")
    assert digests(tmp_path) == before
    for foreign in (thesis, notes):  # --overwrite replaces only an answers file qatune wrote
        rc, _, err = predict(capsys, tiny_lora_run, src, foreign, "--overwrite")
        assert_clean_error(rc, err, f"--output {foreign} exists and is not an answers file of qatune predict",
                           "move it away")
        assert digests(tmp_path) == before


def test_predict_never_writes_into_the_run_or_its_model(tiny_lora_run: Path, tiny_model_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    run_before, model_before = digests(tiny_lora_run), digests(tiny_model_dir)
    for out, folder in ((tiny_lora_run / "answers.jsonl", tiny_lora_run),
                        (tiny_lora_run / "sub" / "answers.jsonl", tiny_lora_run),
                        (tiny_lora_run / "metrics.json", tiny_lora_run),
                        (tiny_model_dir / "answers.jsonl", tiny_model_dir)):  # the LoRA run's base model
        rc, _, err = predict(capsys, tiny_lora_run, src, out, "--overwrite")
        assert_clean_error(rc, err, f"lies inside {folder.resolve()}, a folder this command reads")
        assert digests(tiny_lora_run) == run_before and digests(tiny_model_dir) == model_before
        assert not (tiny_lora_run / "sub").exists()


def test_predict_checks_the_input_before_the_output(tiny_lora_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    out = tmp_path / "answers.jsonl"
    assert predict(capsys, tiny_lora_run, src, out)[0] == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    before = digests(tmp_path)
    for source, words in ((tmp_path / "missing.jsonl", "does not exist"), (bad, "field 'context' is missing")):
        rc, _, err = predict(capsys, tiny_lora_run, source, out, "--overwrite")
        assert_clean_error(rc, err, str(source), words)
        assert digests(tmp_path) == before


def test_predict_new_file_and_overwrite_of_its_own_answers(tiny_lora_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    out = tmp_path / "new" / "answers.jsonl"  # a new file in a new folder
    rc, _, err = predict(capsys, tiny_lora_run, src, out)
    assert rc == 0, err
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["fox", "nile"]
    first = out.read_bytes()

    rc, _, err = predict(capsys, tiny_lora_run, src, out)  # again, without --overwrite: refused, kept
    assert_clean_error(rc, err, "already exists", "--overwrite")
    assert out.read_bytes() == first

    src2 = write_jsonl(tmp_path / "more.jsonl", [{"id": "only", "question": "How fast can a red fox run?",
                                                  "context": FOX}])
    rc, _, err = predict(capsys, tiny_lora_run, src2, out, "--overwrite")
    assert rc == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["only"] and FOX[rows[0]["start"]: rows[0]["end"]] == rows[0]["answer"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["answers.jsonl"]  # no temporary file left


def test_interrupted_predict_keeps_the_previous_answers(tiny_lora_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    out = tmp_path / "answers.jsonl"
    assert predict(capsys, tiny_lora_run, src, out)[0] == 0
    before = digests(tmp_path)
    real = QAPipeline.answer_batch
    calls: list[int] = []

    def answer_then_ctrl_c(self: QAPipeline, *args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl+C after the first question's answer was written
        return real(self, *args, **kw)

    monkeypatch.setattr(predict_cmd, "CHUNK", 1)
    monkeypatch.setattr(QAPipeline, "answer_batch", answer_then_ctrl_c)
    rc, _, err = predict(capsys, tiny_lora_run, src, out, "--overwrite")
    assert rc == 130 and "interrupted" in err, err
    assert len(calls) == 2
    assert digests(tmp_path) == before  # the previous answers, and no half-written temporary file


# -- report ---------------------------------------------------------------------------------------------------

def comparison(folder: Path) -> Path:
    """The smallest comparison folder `qatune compare` leaves: compare.json and one finished method run."""
    (folder / "lora").mkdir(parents=True)
    (folder / runner.PLAN_FILE).write_text(json.dumps({"methods": ["lora"], "method_names": {"lora": "lora"}}))
    (folder / "lora" / "qatune.yaml").write_text("method: lora\nlearning_rate: 0.001\n")
    (folder / "lora" / "metrics.json").write_text(json.dumps({"f1": 61.5, "exact_match": 50.0}))
    return folder


def test_report_refuses_a_foreign_folder(tmp_path: Path, tiny_lora_run: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    (mine / "experiment").mkdir(parents=True)  # looks like a method run: report would have read it
    (mine / "experiment" / "metrics.json").write_text('{"f1": 12.0}')
    (mine / "experiment" / "qatune.yaml").write_text("method: lora\n")
    (mine / "report.md").write_text("# my own report\n")
    (mine / "loss_curves.png").write_bytes(b"\x89PNG my plot")
    empty = tmp_path / "empty"
    empty.mkdir()
    before = {p: digests(p) for p in (mine, empty, tiny_lora_run)}
    for folder, held in ((mine, "holds files qatune did not write"), (empty, "is empty"),
                         (tiny_lora_run, "holds a training run of qatune")):
        rc, _, err = cli(capsys, "report", folder)
        assert_clean_error(rc, err, f"{folder} is not a qatune comparison", held,
                           "pass the --output directory of `qatune compare`")
        assert digests(folder) == before[folder]
    assert sorted(os.listdir(empty)) == []


def test_report_into_a_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = comparison(tmp_path / "cmp")
    (out / "notes.txt").write_text("keep me")
    rc, stdout, err = cli(capsys, "report", out, "--no-plots")
    assert rc == 0, err
    printed = json.loads(stdout)
    assert printed["methods"]["lora"] == {"status": "finished", "f1": 61.5, "exact_match": 50.0}
    for name in ("report.csv", "report.md", "report.json"):
        assert (out / name).is_file(), name
    assert "61.5" in (out / "report.md").read_text()
    assert (out / "notes.txt").read_text() == "keep me"
    assert not [p for p in os.listdir(out) if ".tmp" in p]  # written through temporary files, renamed


def test_compare_known_names_match_the_report() -> None:
    """What rundir counts as a comparison's own files is exactly what compare and report write."""
    assert KNOWN_NAMES["compare"] == ({runner.PLAN_FILE} | set(report_mod.REPORT_FILES)
                                      | {f"{stem}.png" for stem in report_mod.PLOTS})
