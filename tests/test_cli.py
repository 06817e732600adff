"""The ``qatune`` command: clear errors for bad input, and a small train -> evaluate -> score flow.

Most tests call ``qatune.cli.main([...])`` in-process (fast); a few run ``python -m qatune`` in a subprocess
to check what a user really sees: exit status and stderr without a Python traceback unless ``--debug``.
Every error must name the file/record/value, say what to do, and exit non-zero.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE

from qatune.cli import main

CONTEXT = "The Pellory glass works stood beside the canal. It made green bottles until 1962."


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_error(rc: int, err: str, *fragments: str) -> None:
    """Non-zero exit, one 'qatune: error:' message holding every fragment, no Python traceback."""
    assert rc != 0
    assert "Traceback" not in err, err
    assert "qatune: error:" in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in stderr:\n{err}"


def squad(qas: list[dict[str, Any]], context: str | None = CONTEXT) -> dict[str, Any]:
    paragraph: dict[str, Any] = {"qas": qas}
    if context is not None:
        paragraph["context"] = context
    return {"version": "1.1", "data": [{"title": "Pellory", "paragraphs": [paragraph]}]}


def qa(qid: str = "q1", text: str = "green bottles", **fields: Any) -> dict[str, Any]:
    record = {"id": qid, "question": "What did the works make?",
              "answers": [{"text": text, "answer_start": CONTEXT.find(text)}]}
    record.update(fields)
    return record


def write_json(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def train_args(model: Path, data: Path, output: Path, *extra: str) -> list[str | Path]:
    return ["train", "--model", model, "--train", data, "--output", output, "--no-tracking", "--no-progress",
            "--no-eval", *extra, "max_seq_length=128"]


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------
# Bad data files


def test_malformed_json_data_file(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_json(tmp_path / "broken.json", '{"version": "1.1", "data": [{"title": "x",')
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, data, tmp_path / "out"))
    assert_clean_error(rc, err, "broken.json", "not valid JSON at line 1", "Fix the file there")


@pytest.mark.parametrize("record, context, fragments", [
    ({"id": "q1", "answers": [{"text": "green bottles", "answer_start": 55}]}, CONTEXT,
     ["field 'question' is missing or empty", 'qas[0] (id "q1")', "Give the question text"]),
    (qa(), None, ["field 'context' is missing or empty", 'qas[0] (id "q1")', "needs the passage"]),
    (qa(), "   ", ["field 'context' is missing or empty", 'qas[0] (id "q1")']),
    ({"question": "Who?", "answers": []}, CONTEXT, ["field 'id' is missing or empty", "qas[0]", "add one"]),
], ids=["no-question", "no-context", "empty-context", "no-id"])
def test_missing_or_empty_fields(capsys, tmp_path: Path, tiny_model_dir: Path, record: dict, context: str | None,
                                 fragments: list[str]) -> None:
    data = write_json(tmp_path / "bad.json", squad([record], context))
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, data, tmp_path / "out"))
    assert_clean_error(rc, err, "bad.json", 'data[0] (title "Pellory") paragraphs[0]', *fragments)


def test_answers_outside_the_context_are_dropped_and_reported(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_json(tmp_path / "partly.json", squad([
        qa("good-1"), qa("good-2", "the canal"),
        {"id": "outside-1", "question": "Who?", "answers": [{"text": "a blue lorry", "answer_start": 3}]},
    ]))
    rc, out, err = cli(capsys, *train_args(tiny_model_dir, data, tmp_path / "out"))
    assert rc == 0, err
    assert "2 questions from" in err
    assert "1 answers dropped" in err and "1 questions dropped" in err
    assert "outside-1" in err  # the report names the dropped question
    assert json.loads(out)["status"] == "finished"


def test_all_answers_outside_the_context_is_an_error(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_json(tmp_path / "none-left.json", squad([
        {"id": "outside-1", "question": "Who?", "answers": [{"text": "a blue lorry", "answer_start": 3}]},
        {"id": "outside-2", "question": "What?", "answers": [{"text": "", "answer_start": 0}]},
    ]))
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, data, tmp_path / "out"))
    assert_clean_error(rc, err, "none-left.json", "no questions left after loading", "all 2 questions",
                       "Fix the answer texts and answer_start offsets")


def test_missing_data_file(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, tmp_path / "nope.json", tmp_path / "out"))
    assert_clean_error(rc, err, "nope.json", "no such file or directory", "Check the path")


# ---------------------------------------------------------------------------------------------------
# Bad method, model, output


def test_unknown_method(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, SAMPLE / "train.json", tmp_path / "out", "--method", "lorra"))
    assert_clean_error(rc, err, "unknown method 'lorra'", "Choose one of: full, lora", "lora-last4")


@pytest.mark.parametrize("model", ["/nonexistent/qatune-model", "no-such-org/no-such-model-xyz"],
                         ids=["local-path", "hub-id"])
def test_unknown_model(capsys, monkeypatch, tmp_path: Path, model: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, _, err = cli(capsys, *train_args(Path(model), SAMPLE / "train.json", tmp_path / "out"))
    assert_clean_error(rc, err, f"model '{model}'", "HF_HUB_OFFLINE=1",
                       "Pass --model with a local model directory (one with config.json)", "minilm")


def test_model_dir_that_is_not_a_model(capsys, tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    rc, _, err = cli(capsys, *train_args(tmp_path / "empty-model", SAMPLE / "train.json", tmp_path / "out"))
    assert_clean_error(rc, err, "empty-model could not be loaded", "config.json")


def test_unwritable_output_dir(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    # tests run as root, so chmod does not block writes: a path under a regular file can never be a directory
    blocker = write_json(tmp_path / "a-file", "not a directory")
    rc, _, err = cli(capsys, *train_args(tiny_model_dir, SAMPLE / "train.json", blocker / "run"))
    assert_clean_error(rc, err, f"output directory {blocker / 'run'} is not writable", "choose another --output")
    assert blocker.read_text() == "not a directory"


# ---------------------------------------------------------------------------------------------------
# score and predict/evaluate inputs


def test_score_missing_predictions_file(capsys, tmp_path: Path) -> None:
    rc, _, err = cli(capsys, "score", "--data", SAMPLE / "dev.json", "--predictions", tmp_path / "preds.json")
    assert_clean_error(rc, err, f"predictions file {tmp_path / 'preds.json'} does not exist")


@pytest.mark.parametrize("content, fragments", [
    ('{"sample-dev-0001": "a",', ["is not valid JSON (line 1", "preds.json"]),
    ('["a", "b"]', ["must be a JSON object mapping question id -> value"]),
    ('{"sample-dev-0001": 3}', ["answer for id 'sample-dev-0001' is not a string"]),
], ids=["truncated", "list", "not-text"])
def test_score_malformed_predictions(capsys, tmp_path: Path, content: str, fragments: list[str]) -> None:
    preds = write_json(tmp_path / "preds.json", content)
    rc, _, err = cli(capsys, "score", "--data", SAMPLE / "dev.json", "--predictions", preds)
    assert_clean_error(rc, err, *fragments)


def test_score_bad_na_probs(capsys, tmp_path: Path) -> None:
    preds = write_json(tmp_path / "preds.json", {"sample-v2-0001": ""})
    na = write_json(tmp_path / "na.json", {"sample-v2-0001": "high"})
    rc, _, err = cli(capsys, "score", "--data", SAMPLE / "dev-v2.json", "--predictions", preds, "--na-probs", na)
    assert_clean_error(rc, err, "na.json", "'sample-v2-0001'", "not a number")


def test_score_malformed_data_file(capsys, tmp_path: Path) -> None:
    data = write_json(tmp_path / "dev.json", '{"data": [')
    preds = write_json(tmp_path / "preds.json", {})
    rc, _, err = cli(capsys, "score", "--data", data, "--predictions", preds)
    assert_clean_error(rc, err, "dev.json", "not valid JSON")


def test_predict_and_evaluate_on_a_non_run_directory(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    # a Hugging Face model dir is not a run: it has no qatune.yaml
    rc, _, err = cli(capsys, "predict", tiny_model_dir, "--question", "Who?", "--context", CONTEXT)
    assert_clean_error(rc, err, f"{tiny_model_dir} is not a qatune run directory (no qatune.yaml)",
                       "qatune train --output DIR")
    rc, _, err = cli(capsys, "evaluate", tmp_path / "missing-run", "--data", SAMPLE / "dev.json")
    assert_clean_error(rc, err, "missing-run does not exist")


def test_debug_shows_the_traceback(capsys, tmp_path: Path) -> None:
    args = ["score", "--data", SAMPLE / "dev.json", "--predictions", tmp_path / "missing.json"]
    rc, _, err = cli(capsys, "--debug", *args)
    assert rc == 2 and "Traceback" in err and "does not exist" in err
    rc, _, err = cli(capsys, *args, "--debug")  # after the verb too
    assert rc == 2 and "Traceback" in err


def test_internal_errors_have_no_traceback_without_debug(capsys, monkeypatch) -> None:
    """Anything unexpected (even a Rust panic, which is a BaseException) ends in one line and exit 1."""
    import qatune.cli.score_cmd as score_cmd

    class PanicException(BaseException):  # what pyo3 raises for a panic in tokenizers/safetensors
        pass

    def boom(args):
        raise PanicException("stride must be strictly less than max_len")

    monkeypatch.setattr(score_cmd, "run", boom)
    rc, _, err = cli(capsys, "score", "--data", "x", "--predictions", "y")
    assert rc == 1 and "Traceback" not in err
    assert "internal error: PanicException" in err and "rerun with --debug" in err


# ---------------------------------------------------------------------------------------------------
# Subprocess: what a user's shell sees


def run_qatune(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "qatune", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def test_subprocess_bad_data_exits_2_without_traceback(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_json(tmp_path / "broken.json", '{"data": [')
    proc = run_qatune(*train_args(tiny_model_dir, data, tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "qatune: error: " in proc.stderr and "broken.json: not valid JSON" in proc.stderr


def test_subprocess_debug_shows_traceback(tmp_path: Path) -> None:
    data = write_json(tmp_path / "broken.json", '{"data": [')
    preds = write_json(tmp_path / "preds.json", {})
    proc = run_qatune("--debug", "score", "--data", data, "--predictions", preds, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert "qatune: error: " in proc.stderr and "not valid JSON" in proc.stderr


def test_subprocess_score_missing_predictions(tmp_path: Path) -> None:
    proc = run_qatune("score", "--data", SAMPLE / "dev.json", "--predictions", "missing.json", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "predictions file missing.json does not exist" in proc.stderr
    assert proc.stdout == ""


# ---------------------------------------------------------------------------------------------------
# End to end on the tiny model: train -> evaluate -> score (v1 and v2), predict, no overwrite


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("cli-run") / "run"
    rc = main(["train", "--model", str(tiny_model_dir), "--train", str(SAMPLE / "train.json"),
               "--eval", str(SAMPLE / "dev.json"), "--max-train-samples", "20", "--output", str(out),
               "--no-tracking", "--no-progress", "max_seq_length=128"])
    assert rc == 0
    return out


def test_train_writes_a_run(run_dir: Path) -> None:
    for name in ("qatune.yaml", "metrics.json", "history.json", "predictions.json", "adapter_model.safetensors",
                 "adapter_config.json", "tokenizer.json"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_questions"] == 20 and metrics["method"] == "lora"
    assert not (run_dir / "checkpoint").exists()  # removed once the run finished
    assert not (run_dir.parent / "mlflow.db").exists()  # --no-tracking


def test_finished_run_is_not_overwritten(capsys, run_dir: Path, tiny_model_dir: Path) -> None:
    before = file_digests(run_dir)
    rc, _, err = cli(capsys, "train", "--model", tiny_model_dir, "--train", SAMPLE / "train.json",
                     "--max-train-samples", "5", "--output", run_dir, "--no-tracking", "--no-progress",
                     "--no-eval", "max_seq_length=128")
    assert_clean_error(rc, err, f"{run_dir} already holds a finished run", "--overwrite")
    assert file_digests(run_dir) == before


def dev_ids(path: Path) -> set[str]:
    data = json.loads(path.read_text())["data"]
    return {q["id"] for article in data for p in article["paragraphs"] for q in p["qas"]}


def test_evaluate_then_score_v1(capsys, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    rc, stdout, err = cli(capsys, "evaluate", run_dir, "--data", SAMPLE / "dev.json", "--output", out,
                          "--no-progress")
    assert rc == 0, err
    printed = json.loads(stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed == metrics
    assert metrics["squad_version"] == "1.1" and metrics["eval_questions"] == 40
    predictions = json.loads((out / "predictions.json").read_text())
    assert set(predictions) == dev_ids(SAMPLE / "dev.json")  # official format: {id: answer text}
    assert all(isinstance(v, str) for v in predictions.values())
    assert not (out / "na_probs.json").exists()

    rc, stdout, err = cli(capsys, "score", "--data", SAMPLE / "dev.json", "--predictions", out / "predictions.json")
    assert rc == 0, err
    scored = json.loads(stdout)
    assert set(scored) == {"exact_match", "f1"}
    assert scored["exact_match"] == metrics["exact_match"]
    assert scored["f1"] == metrics["f1"]


V2_KEYS = ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1",
           "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]


def test_evaluate_then_score_v2(capsys, run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval-v2"
    rc, _, err = cli(capsys, "evaluate", run_dir, "--data", SAMPLE / "dev-v2.json", "--output", out, "--no-progress")
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["squad_version"] == "2.0" and metrics["total"] == 36
    na_probs = json.loads((out / "na_probs.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert set(na_probs) == set(predictions) == dev_ids(SAMPLE / "dev-v2.json")
    assert all(0.0 <= p <= 1.0 for p in na_probs.values())

    rc, stdout, err = cli(capsys, "score", "--data", SAMPLE / "dev-v2.json", "--predictions",
                          out / "predictions.json", "--na-probs", out / "na_probs.json")
    assert rc == 0, err
    scored = json.loads(stdout)
    assert list(scored) == V2_KEYS  # the official evaluate-v2.0.py keys, in its order
    assert scored["exact"] == metrics["exact"] and scored["f1"] == metrics["f1"]
    assert (scored["HasAns_total"], scored["NoAns_total"]) == (24, 12)


def test_predict_returns_offsets_into_the_context(capsys, run_dir: Path) -> None:
    rc, stdout, err = cli(capsys, "predict", run_dir, "--question", "What did the works make?", "--context", CONTEXT,
                          "--top-k", "2")
    assert rc == 0, err
    answers = json.loads(stdout)
    assert len(answers) == 2
    for a in answers:
        assert CONTEXT[a["start"]:a["end"]] == a["text"]
    rc, _, err = cli(capsys, "predict", run_dir, "--question", "What?", "--context-file", "/nonexistent/ctx.txt")
    assert_clean_error(rc, err, "context file /nonexistent/ctx.txt does not exist")


def test_run_trained_from_a_relative_model_path_loads_anywhere(capsys, monkeypatch, tmp_path: Path,
                                                               tiny_model_dir: Path) -> None:
    """`--model ./dir` is recorded so that the adapter run loads from any working directory."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(tiny_model_dir, work / "base")
    monkeypatch.chdir(work)
    rc, _, err = cli(capsys, *train_args(Path("base"), SAMPLE / "train.json", Path("run"), "--max-train-samples", "4"))
    assert rc == 0, err
    monkeypatch.chdir(tmp_path)  # "base" does not exist from here
    rc, stdout, err = cli(capsys, "predict", work / "run", "--question", "What did the works make?",
                          "--context", CONTEXT)
    assert rc == 0, err
    answer = json.loads(stdout)
    assert CONTEXT[answer["start"]:answer["end"]] == answer["text"]


def test_evaluate_unwritable_output(capsys, run_dir: Path, tmp_path: Path) -> None:
    blocker = write_json(tmp_path / "a-file", "x")
    rc, _, err = cli(capsys, "evaluate", run_dir, "--data", SAMPLE / "dev.json", "--output", blocker / "eval")
    assert_clean_error(rc, err, "is not writable", "choose another --output")


# ---------------------------------------------------------------------------------------------------
# Known bug outside the files this suite owns


def test_tuned_v2_threshold_reaches_best_f1() -> None:
    from qatune.data.squad.squad_types import GoldAnswer, QAExample
    from qatune.tasks.extractive_qa.postprocess import Decoded, Span
    from qatune.tasks.extractive_qa.task import score_predictions

    examples = [QAExample(f"no-{i}", "Who?", CONTEXT, [], is_impossible=True) for i in range(3)]
    examples.append(QAExample("has", "What?", CONTEXT, [GoldAnswer("green bottles", CONTEXT.find("green bottles"))]))
    # the model prefers a (wrong) span everywhere: null score below the best span score, gap < 0
    decoded = [Decoded([Span("the canal", 5.0, 38, 47)], null_score=1.0 + i) for i in range(4)]
    result = score_predictions(examples, decoded, version_2=True, null_threshold=None)
    assert result.metrics["best_f1"] == pytest.approx(75.0)
    assert result.metrics["f1"] == pytest.approx(result.metrics["best_f1"])
