"""The CLI reaches tasks only through the Task contract: ``train`` flags generated from every registered task's
options, ``evaluate MODEL --task`` (zero-shot only where the task allows it), ``predict`` flags generated from
the run's task's request fields and ``--input`` items through ``parse_request``. The task here is
tests/test_custom_task.py's digit classifier, registered by the test, with no change to qatune."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE, assert_clean_error, cli
from test_custom_task import DigitTask, texts

import qatune
from qatune.cli import build_parser
from qatune.cli.train_cmd import config_from_args
from qatune.errors import ConfigError
from qatune.tasks import get_task, register_task, unregister_task


@dataclass
class ShareOptions:
    label_smoothing: float = field(default=0.0, metadata={"help": "smoothing of the targets"})
    classes: list[str] = field(default_factory=lambda: ["a", "b"], metadata={"help": "label names"})


class ShareTask(DigitTask):
    """A second task whose option ``label_smoothing`` has the digit task's name: the two share one flag."""

    name = "share"
    section = "share"
    options_type = ShareOptions

    def resolve_options(self, options: dict[str, Any], context: dict[str, Any], source: str) -> ShareOptions:
        return ShareOptions(**options)


class ZeroShotDigits(DigitTask):
    name = "digits_zero"
    zero_shot = True


@pytest.fixture
def tasks() -> Any:
    for name, factory in (("has_digit", DigitTask), ("share", ShareTask), ("digits_zero", ZeroShotDigits)):
        register_task(name, factory)
    yield
    for name in ("has_digit", "share", "digits_zero"):
        unregister_task(name)


def train_config(*argv: str) -> Any:
    return config_from_args(build_parser().parse_args(["train", *argv]))


# -- train: option flags from every task ---------------------------------------------------------------------

def test_qa_option_flags_keep_working_and_win_over_the_config_file(tmp_path: Path) -> None:
    cfg = train_config("--doc-stride", "64", "--null-threshold", "0.5", "--max-seq-length", "256")
    assert cfg.task_options["doc_stride"] == 64 and cfg.task_options["null_threshold"] == 0.5
    assert cfg.doc_stride == 64  # the flat read access still works
    for spelling in ("qa:\n  doc_stride: 100\n  n_best: 5\n", "doc_stride: 100\nn_best: 5\n"):
        yaml_file = tmp_path / "c.yaml"
        yaml_file.write_text(spelling)
        cfg = train_config("--config", str(yaml_file), "--doc-stride", "32")
        assert (cfg.task_options["doc_stride"], cfg.task_options["n_best"]) == (32, 5)
    assert train_config("--version-2", "true").task_options["version_2"] is True
    with pytest.raises(SystemExit):  # an int option still parses as an int, as before
        train_config("--doc-stride", "wide")


def test_tasks_share_an_option_flag_and_a_foreign_one_is_refused(tasks: None, tmp_path: Path) -> None:
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "--label-smoothing LABEL_SMOOTHING smoothing of the targets [has_digit, share, digits_zero]" in help_text
    assert "--classes CLASSES label names [share] (comma-separated)" in help_text
    assert train_config("--task", "has_digit", "--label-smoothing", "0.1").task_options == {"label_smoothing": 0.1}
    cfg = train_config("--task", "share", "--label-smoothing", "0.2", "--classes", "neg, pos,neutral")
    assert cfg.task_options == {"label_smoothing": 0.2, "classes": ["neg", "pos", "neutral"]}
    with pytest.raises(ConfigError, match=r"--doc-stride is an option of task\(s\) extractive_qa, not of task "
                                          "'has_digit'"):
        train_config("--task", "has_digit", "--doc-stride", "64")
    with pytest.raises(ConfigError, match=r"--label-smoothing is an option of task\(s\) has_digit, share, "
                                          "digits_zero, not of task 'extractive_qa'"):
        train_config("--label-smoothing", "0.1")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("task: has_digit\n")  # the task may come from the config file or an override too
    assert train_config("--config", str(yaml_file), "--label-smoothing", "0.3").task_options == {"label_smoothing": 0.3}
    with pytest.raises(ConfigError, match="not of task 'extractive_qa'"):
        train_config("--config", str(yaml_file), "--label-smoothing", "0.3", "task=qa")


# -- evaluate MODEL --task: zero-shot -----------------------------------------------------------------------

def test_evaluate_a_base_model_only_for_a_zero_shot_task(tasks: None, tiny_model_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str], one_thread: None) -> None:
    rc, _, err = cli(capsys, "evaluate", tiny_model_dir, "--task", "extractive_qa", "--data", SAMPLE / "dev.json")
    assert_clean_error(rc, err, "task 'extractive_qa' has no zero-shot use", "Train first")
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in texts(12, seed=3)))
    rc, _, err = cli(capsys, "evaluate", tiny_model_dir, "--task", "has_digit", "--data", dev)
    assert_clean_error(rc, err, "task 'has_digit' has no zero-shot use")
    rc, out, err = cli(capsys, "evaluate", tiny_model_dir, "--task", "digits_zero", "--data", dev, "--output",
                       tmp_path / "eval", "--no-progress", "--device", "cpu")
    assert rc == 0, err
    metrics = json.loads(out)
    assert metrics["eval_examples"] == 12 and 0.0 <= metrics["accuracy"] <= 100.0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]
    assert len(json.loads((tmp_path / "eval" / "predictions.json").read_text())) == 12
    rc, _, err = cli(capsys, "evaluate", tiny_model_dir, "--data", dev)  # without --task it must be a run
    assert_clean_error(rc, err, "is not a qatune run directory")

    # predict works the same way: a zero-shot task's base model answers, others refuse
    rc, out, err = cli(capsys, "predict", tiny_model_dir, "--task", "digits_zero", "--text", "a cat 5", "--device",
                       "cpu")
    assert rc == 0, err
    assert set(json.loads(out)) == {"label", "probability"}
    rc, _, err = cli(capsys, "predict", tiny_model_dir, "--task", "qa", "--question", "Who?", "--context", "Ana.")
    assert_clean_error(rc, err, "task 'extractive_qa' has no zero-shot use")


# -- predict: request-field flags and --input through the task -----------------------------------------------

@pytest.fixture
def digit_run(tasks: None, tiny_model_dir: Path, tmp_path: Path, one_thread: None) -> Path:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in texts(24, seed=1)))
    out = tmp_path / "run"
    qatune.train({"task": "has_digit", "model": str(tiny_model_dir), "method": "full", "train": str(train),
                  "output": str(out), "epochs": 1, "batch_size": 8, "max_seq_length": 32, "tracking": False,
                  "do_eval": False}, progress=False)
    return out


def test_predict_a_custom_task_from_flags_and_from_a_file(digit_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    predictor = qatune.load(str(digit_run), device="cpu")
    rc, out, err = cli(capsys, "predict", digit_run, "--text", "the cat sat 7 times", "--device", "cpu")
    assert rc == 0, err
    assert json.loads(out) == predictor.predict_batch([{"text": "the cat sat 7 times"}])[0]
    text_file = tmp_path / "t.txt"
    text_file.write_text("the dog ran", encoding="utf-8")
    rc, out, _ = cli(capsys, "predict", digit_run, "--text-file", text_file, "--device", "cpu")
    assert rc == 0 and json.loads(out) == predictor.predict_batch([{"text": "the dog ran"}])[0]

    rc, _, err = cli(capsys, "predict", digit_run, "--task", "qa", "--text", "a")
    assert_clean_error(rc, err, "--task qa: ", "is a run of task 'has_digit'")
    rc, _, err = cli(capsys, "predict", digit_run, "--question", "Who?", "--context", "Ana.")
    assert_clean_error(rc, err, "--question is a request field of task(s) extractive_qa, generative_qa, not of this run's task "
                                "'has_digit' (its fields: --text)")
    rc, _, err = cli(capsys, "predict", digit_run)
    assert_clean_error(rc, err, "give --text TEXT")
    rc, _, err = cli(capsys, "predict", digit_run, "--text", "  ")
    assert_clean_error(rc, err, "command line: 'text' must be a non-empty string")
    rc, _, err = cli(capsys, "predict", digit_run, "--text", "a 1", "--top-k", "2")
    assert_clean_error(rc, err, "--top-k: the task 'has_digit' returns one prediction per item")
    rc, _, err = cli(capsys, "predict", digit_run, "--text", "a 1", "--null-threshold", "0.5")
    assert_clean_error(rc, err, "unknown option(s) ['null_threshold'] for the has_digit task")

    rows = [{"id": "a", "text": "the blue house 4"}, {"text": "a slow river"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_file = tmp_path / "out.jsonl"
    rc, _, err = cli(capsys, "predict", digit_run, "--input", src, "--output", out_file, "--no-progress")
    assert rc == 0, err
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    expected = predictor.predict_batch([{"text": r["text"]} for r in rows])
    assert lines == [{"id": "a", **expected[0]}, {"id": 2, **expected[1]}]
    rc, _, err = cli(capsys, "predict", digit_run, "--input", src, "--output", out_file, "--overwrite",
                     "--no-progress")
    assert rc == 0, err  # its own predictions file may be replaced
    array = tmp_path / "in.json"  # a JSON array of request objects works too
    array.write_text(json.dumps(rows))
    rc, out, _ = cli(capsys, "predict", digit_run, "--input", array, "--no-progress")
    assert rc == 0 and [json.loads(line) for line in out.splitlines()] == lines

    src.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"text": 5}) + "\n")
    rc, _, err = cli(capsys, "predict", digit_run, "--input", src)
    assert_clean_error(rc, err, f"{src} line 2: 'text' must be a non-empty string")
    rc, _, err = cli(capsys, "predict", digit_run, "--input", src, "--text", "x")
    assert_clean_error(rc, err, "drop --text")


def test_single_item_predict_honours_batch_size(tiny_lora_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from qatune.inference import loader

    seen: list[int] = []
    real = loader.load_predictor

    def recording(*args: Any, **kwargs: Any) -> Any:
        predictor = real(*args, **kwargs)
        batch = predictor.predict_batch

        def predict_batch(items: Any, batch_size: int = 32, **options: Any) -> Any:
            seen.append(batch_size)
            return batch(items, batch_size=batch_size, **options)

        predictor.predict_batch = predict_batch
        return predictor

    monkeypatch.setattr(loader, "load_predictor", recording)
    rc, out, err = cli(capsys, "predict", tiny_lora_run, "--question", "Where do foxes live?", "--context",
                       "Foxes live in forests.", "--batch-size", "3", "--device", "cpu")
    assert rc == 0, err
    assert seen == [3] and set(json.loads(out)) == {"text", "score", "start", "end", "no_answer"}


def test_request_flags_come_from_every_registered_task(tasks: None) -> None:
    from qatune.cli.predict_cmd import request_flags

    flags = request_flags()
    assert flags["question"] == flags["context"] == ["extractive_qa", "generative_qa"]
    assert flags["text"] == ["classification", "has_digit", "share", "digits_zero"]  # one shared flag
    assert flags["features"] == ["classification"]
    assert get_task("share").request_fields == {"text": "the text"}


# -- a diverged run writes strict JSON ---------------------------------------------------------------------

class DivergingDigits(DigitTask):
    """The loss turns NaN at the first step: the weights, logits and eval loss follow."""

    def loss(self, module: Any, batch: dict[str, Any]) -> Any:
        return super().loss(module, batch) * float("nan")

    def result(self, examples: list[dict], logits: Any, loss: float | None = None) -> Any:
        evaluated = super().result(examples, logits, loss)
        evaluated.metrics["mean_logit"] = float(logits.mean())  # NaN once the weights are
        return evaluated


def strict_json(path: Path) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_diverged_run_writes_null_and_says_it_diverged(tiny_model_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], one_thread: None) -> None:
    register_task("has_digit", DivergingDigits)
    try:
        train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in texts(16, seed=1)))
        dev.write_text("".join(json.dumps(r) + "\n" for r in texts(8, seed=2)))
        out = tmp_path / "run"
        rc, stdout, err = cli(capsys, "train", "--task", "has_digit", "--model", tiny_model_dir, "--method", "full",
                              "--train", train, "--eval", dev, "--output", out, "--epochs", "1", "--batch-size", "8",
                              "--max-seq-length", "32", "--no-tracking", "--no-progress", "--device", "cpu")
        assert rc == 0, err
        assert "training diverged: " in err and "not finite (written as null)" in err
        assert json.loads(stdout)["status"] == "finished"
        metrics = strict_json(out / "metrics.json")
        assert metrics["diverged"] is True and metrics["train_loss"] is None and metrics["eval_loss"] is None
        assert {"train_loss", "eval_loss"} <= set(metrics["non_finite"])
        assert strict_json(out / "history.json")[0]["train_loss"] is None
        assert metrics["eval_examples"] == 8  # the finite numbers are kept
        rc, stdout, err = cli(capsys, "evaluate", out, "--data", dev, "--output", tmp_path / "eval", "--no-progress")
        assert rc == 0, err
        again = strict_json(tmp_path / "eval" / "metrics.json")
        assert again["mean_logit"] is None and again["non_finite"] == ["mean_logit"]
        assert json.loads(stdout)["mean_logit"] is None and again["eval_examples"] == 8
    finally:
        unregister_task("has_digit")
