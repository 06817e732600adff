"""One comparison, several models and tasks: a tiny extractive BERT beside a tiny causal LM on the same SQuAD
questions, one report. Rows may set ``model``/``task``/``backend``; the data budget stays shared, each row gets
only its own task's options, and tasks that read different data are refused (``Task.data_kind``)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import cli  # noqa: E402
from generative_fixtures import make_model, squad_records, write_squad  # noqa: E402
from test_custom_task import DigitTask  # noqa: E402

from qatune.compare.report import collect, legend_names, loss_figure, merged_spec  # noqa: E402
from qatune.compare.runner import load_compare_spec, method_train_config  # noqa: E402
from qatune.errors import ConfigError  # noqa: E402
from qatune.tasks import register_task, unregister_task  # noqa: E402


@pytest.fixture(scope="module")
def squad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mixed-data")
    return {"train": write_squad(folder / "train.json", squad_records(24, 1), "1.1"),
            "dev": write_squad(folder / "dev.json", squad_records(8, 2), "1.1")}


def _base(squad: dict[str, Path], bert: Path | str = "minilm", lm: Path | str = "smollm2") -> dict[str, Any]:
    return {"model": str(bert), "train": str(squad["train"]), "eval": str(squad["dev"]), "max_seq_length": 128,
            "epochs": 1, "seed": 3, "batch_size": 8, "tracking": False,
            "qa": {"doc_stride": 32}, "generative": {"max_new_tokens": 6},
            "methods": {"bert-full": {"method": "full", "learning_rate": 1e-4},
                        "lm-lora": {"model": str(lm), "task": "generative", "method": "lora", "lora": {"r": 4}}}}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, squad: dict[str, Path]) -> dict[str, Any]:
    """The mixed comparison, run once through the CLI (real `qatune train` subprocesses)."""
    tmp = tmp_path_factory.mktemp("mixed")
    lm = make_model(tmp / "tiny-gpt2", "gpt2")
    cfg = {**_base(squad, tiny_model_dir, lm), "output": str(tmp / "out"),
           "measure": {"latency_questions": 3, "throughput_questions": 6, "throughput_batch_size": 3, "warmup": 0}}
    config = tmp / "compare.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    from qatune.cli import main

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # the CLI prints its JSON summary on stdout: read it back
        rc = main(["compare", "--config", str(config)])
    return {"out": tmp / "out", "rc": rc, "printed": json.loads(stdout.getvalue()), "bert": tiny_model_dir, "lm": lm}


def test_a_mixed_comparison_reports_both_models_on_the_shared_metrics(mixed: dict[str, Any]) -> None:
    out = mixed["out"]
    assert mixed["rc"] == 0
    with open(out / "report.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert list(rows) == ["bert-full", "lm-lora"]
    bert, lm = rows["bert-full"], rows["lm-lora"]
    assert (bert["model"], bert["task"]) == (str(mixed["bert"]), "extractive_qa")
    assert (lm["model"], lm["task"]) == (str(mixed["lm"]), "generative_qa")
    for row in (bert, lm):
        assert row["status"] == "finished" and row["error"] == ""
        assert 0 <= float(row["exact_match"]) <= float(row["f1"]) <= 100  # the metrics both tasks have
        assert row["eval_questions"] == "8" and row["train_questions"] == "24"  # the same questions
        assert float(row["throughput_qps"]) > 0
    assert float(lm["bleu1"]) >= 0 and bert["bleu1"] == ""  # a generative-only metric: empty for the encoder
    assert mixed["printed"]["methods"]["lm-lora"].keys() >= {"f1", "exact_match", "bleu1", "model"}
    assert "bleu1" not in mixed["printed"]["methods"]["bert-full"]

    md = (out / "report.md").read_text()
    assert "| method | model | task | status | EM (%) | F1 (%) | BLEU-1 |" in md
    bert_line = next(line for line in md.splitlines() if line.startswith("| bert-full | "))
    assert f"| {mixed['bert'].name} | extractive_qa | finished |" in bert_line and bert_line.count("–") >= 1
    assert f"| lm-lora | {mixed['lm'].name} | generative_qa | finished |" in md
    assert f"models `{mixed['bert'].name}`, `{mixed['lm'].name}`" in md
    assert "extractive_qa rows: EM/F1" in md and "generative_qa rows: EM/F1" in md
    assert "Losses of different tasks measure different things" in md
    html = (out / "report.html").read_text()
    assert "<th>model</th><th>task</th>" in html and f"<td>{mixed['lm'].name}</td>" in html
    report = json.loads((out / "report.json").read_text())
    assert report["setup"]["models"] == [str(mixed["bert"]), str(mixed["lm"])]
    assert report["setup"]["tasks"] == ["extractive_qa", "generative_qa"]
    assert report["setup"]["qa"]["doc_stride"] == 32 and report["setup"]["generative"]["max_new_tokens"] == 6
    for stem in ("loss_curves", "f1_vs_params", "train_time", "peak_memory"):
        assert (out / f"{stem}.png").read_bytes().startswith(b"\x89PNG"), stem


def test_each_row_trains_with_its_own_task_options_only(mixed: dict[str, Any]) -> None:
    bert = yaml.safe_load((mixed["out"] / "bert-full" / "compare_train.yaml").read_text())
    lm = yaml.safe_load((mixed["out"] / "lm-lora" / "compare_train.yaml").read_text())
    assert bert["task"] == "extractive_qa" and bert["qa"]["doc_stride"] == 32 and "generative" not in bert
    assert lm["task"] == "generative_qa" and lm["generative"]["max_new_tokens"] == 6 and "qa" not in lm
    assert lm["model"] == str(mixed["lm"]) and bert["model"] == str(mixed["bert"])
    shared = ("train", "eval", "epochs", "seed", "max_seq_length", "max_train_samples", "max_eval_samples")
    assert {k: bert.get(k) for k in shared} == {k: lm.get(k) for k in shared}


def test_the_loss_plot_has_one_labelled_line_per_row(mixed: dict[str, Any]) -> None:
    report = collect(mixed["out"])
    names = legend_names(report["records"])
    assert names == {"bert-full": f"bert-full ({mixed['bert'].name})", "lm-lora": f"lm-lora ({mixed['lm'].name})"}
    records = report["records"]
    fig = loss_figure(records, {"bert-full": "C0", "lm-lora": "C1"}, names)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(names.values())
    assert legend.get_title().get_text() == "method (model)"
    lines = [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in lines] == list(names.values())  # one labelled training curve per row
    assert all(line.get_marker() == "o" and len(line.get_xdata()) >= 1 for line in lines)  # few steps: markers
    assert "compare a row's curve with the rows of its own task only" in report["plots"]["loss_curves"]
    assert all(r["history"] and r["history"][0].get("steps") for r in records)  # per-step curves, not epoch dots


def test_merged_metrics_put_the_shared_ones_first() -> None:
    spec = merged_spec(["extractive_qa", "generative_qa"])
    assert [c.key for c in spec.columns] == ["exact_match", "f1", "bleu1"] and spec.primary == "f1"
    assert [c.key for c in spec.optional] == ["HasAns_f1", "NoAns_f1"]
    assert merged_spec(["generative_qa", "extractive_qa"]).columns[2].key == "bleu1"
    assert merged_spec(["extractive_qa"]).metric_note.startswith("EM/F1: SQuAD")  # one task: its own spec


# -- the spec: what a row may set, what it gets, what is refused ----------------------------------------------

def test_a_row_may_set_model_task_and_backend_but_not_the_data_budget(squad: dict[str, Path]) -> None:
    base = _base(squad)
    spec = load_compare_spec(None, base)
    bert, lm = (method_train_config(spec, m) for m in spec.methods)
    assert (bert.model, bert.task, bert.task_options["doc_stride"]) == ("minilm", "extractive_qa", 32)
    assert (lm.model, lm.task, lm.task_options["max_new_tokens"]) == ("smollm2", "generative_qa", 6)
    native = load_compare_spec(None, {**base, "methods": {"n": {"method": "full", "backend": "native"}}})
    assert method_train_config(native, native.methods[0]).backend == "native"
    for key, value in (("epochs", 2), ("max_train_samples", 10), ("train", str(squad["dev"])), ("seed", 1),
                       ("max_seq_length", 64), ("max_new_tokens", 4), ("generative", {"num_beams": 2})):
        methods = {**base["methods"], "lm-lora": {**base["methods"]["lm-lora"], key: value}}
        with pytest.raises(ConfigError, match=rf"methods\.lm-lora\.{key}: '{key}' is the same for every method"):
            load_compare_spec(None, {**base, "methods": methods})
    with pytest.raises(ConfigError, match=r"methods\.x: unknown task 'nope'"):
        load_compare_spec(None, {**base, "methods": {"x": {"task": "nope"}}})
    with pytest.raises(ConfigError, match=r"methods\.x\.model must be a name such as 'minilm', got 3"):
        load_compare_spec(None, {**base, "methods": {"x": {"model": 3}}})


def test_tasks_that_read_other_data_are_refused_naming_the_method(squad: dict[str, Path]) -> None:
    base = _base(squad)
    with pytest.raises(ConfigError, match=r"methods\.cls\.task: 'classification' reads labelled_text data, but this "
                                          r"comparison's train/eval files are read as squad data \('extractive_qa'\)"):
        load_compare_spec(None, {**base, "methods": {**base["methods"], "cls": {"task": "classification"}}})
    with pytest.raises(ConfigError, match=r"methods\.lm-lora\.task: 'generative_qa' reads squad data.*"
                                          r"labelled_text data \('classification'\)"):
        load_compare_spec(None, {**base, "task": "classification"})
    # the rule is the task contract's data_kind, not a list of names: a task without one shares data with
    # itself only; one that reads SQuAD files like the QA tasks joins a SQuAD comparison
    register_task("has_digit", DigitTask)
    register_task("squad_digits", type("SquadDigits", (DigitTask,), {"name": "squad_digits", "data_kind": "squad"}))
    try:
        with pytest.raises(ConfigError, match=r"methods\.d\.task: 'has_digit' reads has_digit data"):
            load_compare_spec(None, {**base, "methods": {**base["methods"], "d": {"task": "has_digit"}}})
        spec = load_compare_spec(None, {**base, "methods": {**base["methods"], "d": {"task": "squad_digits", "method": "full"}}})
        assert method_train_config(spec, spec.methods[2]).task == "squad_digits"
    finally:
        unregister_task("has_digit")
        unregister_task("squad_digits")


def test_sections_and_flat_keys_go_to_their_own_task_only(squad: dict[str, Path]) -> None:
    base = _base(squad)
    only_qa = {**base, "methods": {"full": {}}, "generative": {"max_new_tokens": 500}}  # no generative row: unused
    spec = load_compare_spec(None, only_qa)
    assert method_train_config(spec, spec.methods[0]).task == "extractive_qa"
    with pytest.raises(ConfigError, match="'generative.max_new_tokens': 500 leaves no room"):  # used: checked
        load_compare_spec(None, {**base, "generative": {"max_new_tokens": 500}})
    # a flat option key belongs to the top-level task (version_2 is an option of both QA tasks)
    spec = load_compare_spec(None, {**base, "version_2": True})
    bert, lm = (method_train_config(spec, m) for m in spec.methods)
    assert bert.task_options["version_2"] is True and lm.task_options["version_2"] is None
    # the top-level task may be the generative one; the extractive row then gets the qa: section only
    flipped = {**base, "model": "smollm2", "task": "generative", "version_2": True,
               "methods": {"lm": {"method": "lora"}, "bert": {"model": "minilm", "task": "extractive_qa", "method": "full"}}}
    spec = load_compare_spec(None, flipped)
    lm, bert = (method_train_config(spec, m) for m in spec.methods)
    assert lm.task_options == {**lm.task_options, "version_2": True, "max_new_tokens": 6}
    assert bert.task_options["doc_stride"] == 32 and bert.task_options["version_2"] is None


def test_the_committed_generative_comparison_holds_both_models() -> None:
    from conftest import REPO

    spec = load_compare_spec(REPO / "configs" / "compare_generative.yaml")
    configs = {m.label: method_train_config(spec, m) for m in spec.methods}
    kinds = {(c.model, c.task) for c in configs.values()}
    assert kinds == {("smollm2", "generative_qa"), ("minilm", "extractive_qa")}
    assert {c.method for c in configs.values() if c.model == "minilm"} == {"full", "lora"}
    assert len({(c.train, c.eval, c.max_train_samples, c.max_eval_samples, c.epochs, c.seed)
                for c in configs.values()}) == 1


def test_the_cli_refuses_a_mixed_budget_in_one_line(squad: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import assert_clean_error

    cfg = _base(squad)
    cfg["methods"]["lm-lora"]["epochs"] = 3
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**cfg, "output": str(tmp_path / "out")}))
    rc, _, err = cli(capsys, "compare", "--config", path)
    assert_clean_error(rc, err, "methods.lm-lora.epochs", "set it at the top level")
    assert not (tmp_path / "out").exists()


def test_a_pipeline_refuses_a_mixed_comparison_naming_the_row(squad: dict[str, Path], tmp_path: Path) -> None:
    """The pipeline's data step prepares one model's features: a mixed comparison is refused before compiling."""
    from qatune.pipelines.steps import compare_plan

    config = tmp_path / "mixed.yaml"
    config.write_text(yaml.safe_dump({**_base(squad), "output": str(tmp_path / "out")}, sort_keys=False))
    with pytest.raises(ConfigError, match=r"methods\.lm-lora\.model is 'smollm2'.*one pipeline per model"):
        compare_plan(config)
