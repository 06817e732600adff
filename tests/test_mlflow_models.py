"""A trained run as an MLflow Model in the Model Registry of a real ``mlflow server``.

The server (SQLite backend store, artifacts proxied by the server to ``--artifacts-destination``) is started
by the module fixture and stopped as a process group. A tiny LoRA run trains with ``register_model``; then
``models:/NAME/1`` is loaded through ``mlflow.pyfunc.load_model``, through ``qatune.load`` and served by
``mlflow models serve --env-manager local``, and every one gives the run directory's answers.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed: MLflow model tests skipped "
                                               "(pip install mlflow)")
from mlflow.tracking import MlflowClient  # noqa: E402
from test_tracking import free_port, mlflow_exe, mlflow_server_in, process_group, wait_for  # noqa: E402

import qatune  # noqa: E402
from qatune.errors import ModelError  # noqa: E402
from qatune.tasks import get_task  # noqa: E402

NAME = "qatune-tiny-squad"
SERVE_START_TIMEOUT_S = 150  # mlflow models serve imports mlflow, torch and the model on a busy 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("mlflow-registry")
    with mlflow_server_in(tmp, ["--artifacts-destination", str(tmp / "artifacts")]) as url:
        yield url


@pytest.fixture(scope="module")
def registered(server: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("registered") / "run"
    result = qatune.train({"model": str(tiny_model_dir), "method": "lora", "train": str(SAMPLE / "train.json"),
                           "eval": str(SAMPLE / "dev.json"), "max_train_samples": 16, "max_eval_samples": 8,
                           "epochs": 1, "batch_size": 8, "max_seq_length": 128, "output": str(out),
                           "tracking_uri": server, "experiment": "registry-test", "register_model": NAME},
                          progress=False)
    task = get_task("extractive_qa")
    examples, _ = task.read(str(SAMPLE / "dev.json"), 4)
    requests = [task.to_request(e) for e in examples]
    predictor = qatune.load(str(out))
    expected = [task.format_response(p) for p in predictor.predict_batch([task.parse_request(r, "t") for r in requests])]
    return {"result": result, "requests": requests, "expected": expected, "run_dir": out}


def same_answers(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (g["text"], g["start"], g["end"], bool(g["no_answer"])) == (e["text"], e["start"], e["end"],
                                                                           e["no_answer"])
        assert g["score"] == pytest.approx(e["score"], rel=1e-4, abs=1e-6)


def test_training_registers_version_1(registered: dict[str, Any], server: str) -> None:
    assert registered["result"].metrics["registered_model"] == f"models:/{NAME}/1"
    client = MlflowClient(tracking_uri=server)
    version = client.get_model_version(NAME, "1")
    run = client.get_run(version.run_id)
    assert run.info.run_name == "run" and run.info.status == "FINISHED"


def test_pyfunc_load_model_gives_the_run_dirs_answers(registered: dict[str, Any], server: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    assert list(model.metadata.get_input_schema().input_names()) == ["question", "context"]  # the request fields
    assert {"text", "score", "start", "end", "no_answer"} <= set(model.metadata.get_output_schema().input_names())
    answers = model.predict(pd.DataFrame(registered["requests"]))
    same_answers(answers.to_dict(orient="records"), registered["expected"])
    # a bad row is a clear MLflow error naming the row and field, not a traceback from inside qatune
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="row 1"):
        model.predict(pd.DataFrame([registered["requests"][0], {"question": "", "context": "text"}]))


def test_model_files_are_the_run_and_nothing_pickled(registered: dict[str, Any], server: str, tmp_path: Path) -> None:
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/1", dst_path=str(tmp_path),
                                                     tracking_uri=server, registry_uri=server))
    import yaml

    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["loader_module"] == "qatune.inference.pyfunc" and flavor["data"] == "data/run"
    assert (local / "input_example.json").is_file() and mlmodel["signature"]["inputs"]
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"data/run/qatune.yaml", "data/run/adapter_model.safetensors", "data/run/adapter_config.json",
            "data/run/README.md"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle")) or "checkpoint" in f], files
    run_files = {p.name for p in registered["run_dir"].iterdir() if p.is_file()}
    assert {Path(f).name for f in files if f.startswith("data/run/")} == run_files


def test_logging_the_model_prints_no_integer_column_hint(registered: dict[str, Any], server: str,
                                                         tmp_path: Path) -> None:
    """MLflow's hint about integer columns and missing values concerns inputs; a qatune answer's integer
    columns (start/end) are always filled, so logging the model must not print it (it did, in the quickstart)."""
    import warnings

    import pandas as pd

    from qatune.inference.pyfunc import _load_pyfunc, stage_run
    from qatune.tracking.mlflow_model import log_model

    staged = stage_run(registered["run_dir"], tmp_path)
    example = pd.DataFrame([registered["requests"][0]])
    answer = _load_pyfunc(str(staged)).predict(example)
    assert answer["start"].dtype.kind == "i" and answer["end"].dtype.kind == "i"  # what the hint is about
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server)
    try:
        mlflow.set_experiment("integer-hint")
        with mlflow.start_run(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = log_model(staged, example, answer, None)
    finally:
        mlflow.set_tracking_uri(previous)
    assert not [w for w in caught if "integer column" in str(w.message)], [str(w.message)[:80] for w in caught]
    outputs = {spec.name: spec.type.name for spec in info.signature.outputs.inputs}
    assert outputs["start"] == outputs["end"] == "long" and outputs["text"] == "string"


def test_qatune_load_of_a_registry_uri(registered: dict[str, Any], server: str) -> None:
    task = get_task("extractive_qa")
    predictor = qatune.load(f"models:/{NAME}/1", tracking_uri=server)
    items = [task.parse_request(r, "t") for r in registered["requests"]]
    same_answers([task.format_response(p) for p in predictor.predict_batch(items)], registered["expected"])
    with pytest.raises(ModelError, match=f"MLflow model models:/{NAME}/7 could not be downloaded from {server}"):
        qatune.load(f"models:/{NAME}/7", tracking_uri=server)


def test_mlflow_models_serve_answers(registered: dict[str, Any], server: str, tmp_path: Path) -> None:
    port = free_port()
    argv = [str(mlflow_exe()), "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = tmp_path / "serve.log"
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH even when the venv is not activated
    path = f"{mlflow_exe().parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with process_group(argv, log, {"MLFLOW_TRACKING_URI": server, "PATH": path}) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for(proc, f"{url}/ping", log, "mlflow models serve", SERVE_START_TIMEOUT_S)
        body = json.dumps({"dataframe_records": registered["requests"]}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
        same_answers(predictions, registered["expected"])


def test_register_model_flag_and_config_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    from conftest import assert_clean_error, cli

    from qatune.training import trainer

    seen: list[Any] = []
    monkeypatch.setattr(trainer, "train", lambda cfg, progress=True: seen.append(cfg) or trainer.TrainResult(
        Path(cfg.output), {"registered_model": f"models:/{cfg.register_model}/4"}))
    rc, out, _ = cli(capsys, "train", "--train", "x.json", "--output", tmp_path / "r", "--register-model", "squad-lora",
                     "tracking=mlflow,tensorboard")
    assert rc == 0 and seen[0].register_model == "squad-lora" and seen[0].tracking == ["mlflow", "tensorboard"]
    assert json.loads(out)["registered_model"] == "models:/squad-lora/4"
    rc, _, err = cli(capsys, "train", "--train", "x.json", "--output", tmp_path / "r", "--register-model", "squad-lora",
                     "--no-tracking")
    assert_clean_error(rc, err, "register_model", "MLflow tracking is off")
    assert len(seen) == 1  # refused before training
