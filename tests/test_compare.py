"""``qatune compare`` / ``qatune report``: one real tiny comparison (subprocesses, MLflow), then reruns,
report rebuilds and Ctrl-C on copies of it with the training subprocess replaced by a recorder.

The real run: a tiny random BERT, 20 sample questions, 1 epoch, max_seq_length 128; methods full, lora, ia3,
plus ``bad-target`` (a LoRA target module the model lacks: the training subprocess fails) and ``bad-opt`` (an unknown
option: rejected before any training).
"""

from __future__ import annotations

import csv
import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, SAMPLE

from qatune.cli import main
from qatune.compare import runner
from qatune.compare.report import BASE_COLUMNS, PLOTS, REPORT_FILES
from qatune.errors import ConfigError

CHROMIUM = Path("/usr/bin/chromium")
GOOD = ["full", "lora", "ia3"]
ALL = GOOD + ["bad-target", "bad-opt"]


def _tiny_config(tmp: Path, model: Path, output: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "compare_tiny.yaml").read_text())
    cfg.update(model=str(model), train=str(SAMPLE / "train.json"), eval=str(SAMPLE / "dev.json"), output=str(output),
               tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="compare-test")
    # (a negative learning rate no longer reaches training: it is refused when the plan is read)
    cfg["methods"].update({"bad-target": {"method": "lora", "lora": {"target_modules": ["nope"]}},
                           "bad-opt": {"method": "loha", "loha": {"rank": 4}}})
    path = tmp / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    """Run the tiny comparison once through the CLI (real `qatune train` subprocesses)."""
    tmp = tmp_path_factory.mktemp("compare")
    out = tmp / "out"
    config = _tiny_config(tmp, tiny_model_dir, out)
    rc = main(["compare", "--config", str(config)])
    return {"tmp": tmp, "out": out, "config": config, "rc": rc}


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "report.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _copy(compared: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished comparison and a config pointing at it (tracking off)."""
    out = tmp_path / "out"
    shutil.copytree(compared["out"], out)
    cfg = yaml.safe_load(compared["config"].read_text())
    cfg.update(output=str(out), tracking=False)
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out, config


# -- the real comparison ------------------------------------------------------------------------------------

def test_compare_writes_every_file_and_column(compared: dict[str, Any]) -> None:
    out = compared["out"]
    assert compared["rc"] == 1  # some methods failed
    for name in REPORT_FILES + [f"{stem}.png" for stem in PLOTS] + ["compare.json"]:
        assert (out / name).is_file(), name
    for stem in PLOTS:
        png = (out / f"{stem}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, stem

    rows = _rows(out)
    assert [r["method"] for r in rows] == ALL
    assert set(BASE_COLUMNS) <= set(rows[0])
    assert "HasAns_f1" not in rows[0]  # SQuAD v1.1 sample: no v2 columns
    by = {r["method"]: r for r in rows}
    for name in GOOD:
        row = by[name]
        assert row["status"] == "finished" and row["error"] == ""
        for col in BASE_COLUMNS[3:]:
            assert row[col] != "", (name, col)
            float(row[col])
        assert 0 <= float(row["f1"]) <= 100
        assert float(row["trainable_params"]) <= float(row["total_params"])
        assert float(row["latency_p95_ms"]) >= float(row["latency_p50_ms"]) > 0
        assert float(row["throughput_qps"]) > 0 and float(row["peak_memory_mb"]) > 0
        assert float(row["adapter_size_mb"]) > 0 and row["epochs"] == "1"
        assert (out / name / "train.log").is_file() and (out / name / "compare_train.yaml").is_file()
    assert by["full"]["trainable_pct"] == "100.0"
    assert float(by["lora"]["trainable_params"]) < float(by["full"]["trainable_params"])
    assert float(by["lora"]["adapter_size_mb"]) < float(by["full"]["adapter_size_mb"])
    assert float(by["lora"]["learning_rate"]) == 2e-3 and float(by["full"]["learning_rate"]) == 1e-4


def test_failing_methods_are_recorded_and_the_rest_run(compared: dict[str, Any]) -> None:
    out = compared["out"]
    by = {r["method"]: r for r in _rows(out)}
    # a runtime failure inside the training subprocess: the error comes from its stderr
    assert by["bad-target"]["status"] == "failed"
    assert "{'nope'} not found in the base model" in by["bad-target"]["error"]
    assert (out / "bad-target" / "train.log").is_file() and not (out / "bad-target" / "metrics.json").exists()
    # an invalid option: rejected before training, without a subprocess
    assert by["bad-opt"]["status"] == "failed" and "rank" in by["bad-opt"]["error"]
    assert not (out / "bad-opt" / "train.log").exists()
    # bad-target ran after full/lora/ia3 were trained and bad-opt came last: both failures left the others finished
    assert all(by[m]["status"] == "finished" for m in GOOD)
    md = (out / "report.md").read_text()
    assert "## Problems" in md and "bad-target" in md and "not found in the base model" in md


def test_markdown_and_json_reports(compared: dict[str, Any]) -> None:
    out = compared["out"]
    md = (out / "report.md").read_text()
    for text in ("## Results: quality", "## Results: cost", "## Loss per epoch", "## F1 per epoch", "F1 (%)",
                 "train time (s)", "peak memory (MB)", "latency p50 (ms, batch 1)", "throughput (questions/s)",
                 "weights on disk (MB)", "epoch 1 val loss"):
        assert text in md, text
    data = json.loads((out / "report.json").read_text())
    methods = {m["method"]: m for m in data["methods"]}
    assert list(methods) == ALL
    for name in GOOD:
        (epoch,) = methods[name]["history"]
        assert {"train_loss", "eval_loss", "f1", "exact_match"} <= set(epoch)
        assert methods[name]["measure"]["latency_questions"] == 10
    assert methods["lora"]["hyperparameters"]["options"]["r"] == 4
    assert methods["bad-target"]["error_tail"] and methods["bad-target"]["history"] == []
    assert data["setup"]["epochs"] == 1 and data["setup"]["train_questions"] == 20


def test_mlflow_parent_with_nested_method_runs(compared: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{compared['tmp'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("compare-test")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("qatune.compare") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(GOOD) <= set(children)
    assert all(children[m].info.status == "FINISHED" for m in GOOD)
    assert "lora.f1" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{name}" for name in REPORT_FILES} <= artifacts


# -- reruns, report, Ctrl-C (copies of the real comparison; no training) -----------------------------------

class Recorder:
    """Stands in for the training subprocess: records what would have been launched."""

    def __init__(self, interrupt: bool = False) -> None:
        self.launched: list[str] = []
        self.interrupt = interrupt

    def __call__(self, config_path: Path, run_dir: Path, env: dict[str, str]) -> runner.LaunchResult:
        self.launched.append(run_dir.name)
        if self.interrupt:
            raise KeyboardInterrupt
        (run_dir / runner.LOG_FILE).write_text("qatune: error: pretend failure\n")
        return runner.LaunchResult(2, 0.1, ["qatune: error: pretend failure"])


def test_rerun_skips_finished_methods(compared: dict[str, Any], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out, config = _copy(compared, tmp_path)
    mtimes = {m: (out / m / "metrics.json").stat().st_mtime_ns for m in GOOD}
    report_mtime = (out / "report.csv").stat().st_mtime_ns
    recorder = Recorder()
    monkeypatch.setattr(runner, "_launch", recorder)
    monkeypatch.setattr("qatune.compare.measure.measure_run", lambda *a, **k: pytest.fail("re-measured"))
    assert main(["compare", "--config", str(config)]) == 1
    assert recorder.launched == ["bad-target"]  # only the failed method is retried
    assert {m: (out / m / "metrics.json").stat().st_mtime_ns for m in GOOD} == mtimes
    assert (out / "report.csv").stat().st_mtime_ns > report_mtime
    err = capsys.readouterr().err
    assert "[1/5] full: skipped, finished earlier (F1" in err
    assert "[4/5] bad-target: FAILED after" in err and "pretend failure" in err
    by = {r["method"]: r for r in _rows(out)}
    assert by["bad-target"]["error"] == "error: pretend failure" and by["lora"]["status"] == "finished"

    # --force reruns everything (the recorder fails them all; the old results are gone, not mixed in)
    recorder.launched.clear()
    assert main(["compare", "--config", str(config), "--methods", "lora,ia3", "--force"]) == 1
    assert recorder.launched == ["lora", "ia3"]
    assert [r["status"] for r in _rows(out)] == ["failed", "failed"]


def test_report_rebuilds_every_file(compared: dict[str, Any], tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    out, _ = _copy(compared, tmp_path)
    before = (out / "report.csv").read_text()
    for name in REPORT_FILES + [f"{stem}.png" for stem in PLOTS]:
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    for name in REPORT_FILES + [f"{stem}.png" for stem in PLOTS]:
        assert (out / name).is_file(), name
    assert (out / "report.csv").read_text() == before.replace(str(compared["out"]), str(out))
    printed = json.loads(capsys.readouterr().out)
    assert printed["methods"]["lora"]["status"] == "finished"
    assert main(["report", str(tmp_path / "missing")]) == 2  # a clear error, no traceback


def test_squad_v2_columns(compared: dict[str, Any], tmp_path: Path) -> None:
    """With SQuAD v2 metrics the CSV gains HasAns_f1/NoAns_f1 right after f1 (same for the tables)."""
    from qatune.compare.report import write_report

    out, _ = _copy(compared, tmp_path)
    metrics_file = out / "lora" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics.update(HasAns_f1=40.0, NoAns_f1=60.0)
    metrics_file.write_text(json.dumps(metrics))
    write_report(out, plots=False)
    header = (out / "report.csv").read_text().splitlines()[0].split(",")
    assert header[header.index("f1") + 1: header.index("f1") + 4] == ["HasAns_f1", "NoAns_f1", "eval_loss"]
    by = {r["method"]: r for r in _rows(out)}
    assert by["lora"]["HasAns_f1"] == "40.0" and by["full"]["HasAns_f1"] == ""
    assert "HasAns F1 (%)" in (out / "report.md").read_text()


def test_ctrl_c_keeps_finished_results(compared: dict[str, Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out, config = _copy(compared, tmp_path)
    mtimes = {m: (out / m / "metrics.json").stat().st_mtime_ns for m in GOOD}
    monkeypatch.setattr(runner, "_launch", Recorder(interrupt=True))
    spec = runner.load_compare_spec(config, methods="full,prefix,lora")
    with pytest.raises(KeyboardInterrupt):
        runner.run_compare(spec)
    by = {r["method"]: r for r in _rows(out)}
    assert by["full"]["status"] == by["lora"]["status"] == "finished"
    assert by["prefix"]["status"] == "interrupted"
    assert {m: (out / m / "metrics.json").stat().st_mtime_ns for m in GOOD} == mtimes
    assert (out / "report.html").is_file()


def test_html_renders_in_headless_chromium(compared: dict[str, Any], tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium); the HTML report is not rendered")
    url = (compared["out"] / "report.html").resolve().as_uri()
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--window-size=1200,2000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 30_000
    assert struct.unpack(">II", png[16:24]) == (1200, 2000)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.std() > 0.05  # not a blank page

    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert dom.count("<table") == 4  # quality, cost, loss per epoch, F1 per epoch
    assert dom.count('<img alt="') == len(PLOTS) and dom.count('src="data:image/png;base64,') == len(PLOTS)
    for text in ("F1 (%)", "latency p50 (ms, batch 1)", "bad-target", "not found in the base model"):
        assert text in dom, text


# -- spec parsing and progress lines (no training) ------------------------------------------------------------

def _spec_yaml(tmp_path: Path, **extra: Any) -> Path:
    cfg = {"model": "minilm", "train": str(SAMPLE / "train.json"), "eval": str(SAMPLE / "dev.json"), "epochs": 1,
           "methods": {"full": {"learning_rate": 1e-4}, "lora": {"lora": {"r": 8}},
                       "lora-r16": {"method": "lora", "lora": {"r": 16}}}}
    cfg.update(extra)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_spec_schema(tmp_path: Path) -> None:
    spec = runner.load_compare_spec(_spec_yaml(tmp_path), overrides=["methods.lora-r16.learning_rate=1e-3"])
    assert [(m.label, m.method) for m in spec.methods] == [("full", "full"), ("lora", "lora"), ("lora-r16", "lora")]
    assert spec.methods[2].overrides["lora"] == {"r": 16}
    cfg = runner.method_train_config(spec, spec.methods[2])
    assert cfg.method == "lora" and cfg.method_options["lora"]["r"] == 16 and cfg.epochs == 1
    assert cfg.learning_rate == 1e-3  # YAML reads 1e-3 as text; the train config makes it a number
    assert cfg.output.endswith("lora-r16") and cfg.run_name == "lora-r16"

    # --methods picks and orders; methods the YAML does not mention run with their defaults
    spec = runner.load_compare_spec(_spec_yaml(tmp_path), methods="ia3,lora-last4,full")
    assert [m.label for m in spec.methods] == ["ia3", "lora-last4", "full"]
    assert runner.method_train_config(spec, spec.methods[1]).method == "lora-last4"
    spec = runner.load_compare_spec(_spec_yaml(tmp_path, methods=["full", "ia3"]))
    assert [m.label for m in spec.methods] == ["full", "ia3"]

    with pytest.raises(ConfigError, match="same for every method"):
        runner.load_compare_spec(_spec_yaml(tmp_path, methods={"lora": {"epochs": 5}}))
    with pytest.raises(ConfigError, match="training and evaluation data"):
        runner.load_compare_spec(_spec_yaml(tmp_path, eval=None))
    with pytest.raises(ConfigError, match="no methods"):
        runner.load_compare_spec(_spec_yaml(tmp_path, methods={}))
    with pytest.raises(ConfigError, match="measure"):
        runner.load_compare_spec(_spec_yaml(tmp_path, measure={"latency": 5}))
    with pytest.raises(ConfigError, match="label"):
        runner.load_compare_spec(_spec_yaml(tmp_path), methods="../x")
    with pytest.raises(ConfigError):  # a bad option is the method's own failure, found before training
        spec = runner.load_compare_spec(_spec_yaml(tmp_path, methods={"lora": {"lora": {"rank": 4}}}))
        runner.method_train_config(spec, spec.methods[0])


def test_progress_line_format() -> None:
    line = runner.progress_line(2, 7, "lora", "done in 2m03s (F1 45.2)", 250, 720)
    assert line == "[2/7] lora: done in 2m03s (F1 45.2) — elapsed 4m10s, ETA 12m"
    assert runner.progress_line(7, 7, "full", "done in 5s", 3700, 0).endswith("elapsed 1h01m")
    assert runner.progress_line(1, 3, "full", "done in 5s", 5, None).endswith("ETA ?")
    fail = runner.LaunchResult(-9, 3.0, ["epoch 1 ..."])
    assert runner.failure_message(fail).startswith("killed by SIGKILL (out of memory?)")
    fail = runner.LaunchResult(1, 3.0, ["Traceback", "qatune: internal error: ValueError: boom", "tail"])
    assert runner.failure_message(fail) == "internal error: ValueError: boom"
