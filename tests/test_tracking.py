"""MLflow tracking of training runs: to a real ``mlflow server`` over HTTP, and to the default SQLite store.

The server test starts ``mlflow server`` (SQLite backend, local artifact root) on a free port in its own
process group, waits for ``GET /health`` and always stops the whole group. Trainings use the tiny model.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLE

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed: MLflow tracking tests skipped "
                                               "(pip install mlflow)")
from mlflow.tracking import MlflowClient  # noqa: E402

import qatune  # noqa: E402

SERVER_START_TIMEOUT_S = 75  # mlflow server takes ~30 s to import on a busy 2-core machine
EPOCHS = 2


def tiny_training(model: Path, output: Path, **extra: Any) -> dict[str, Any]:
    return {"model": str(model), "method": "lora", "train": str(SAMPLE / "train.json"),
            "eval": str(SAMPLE / "dev.json"), "max_train_samples": 16, "max_eval_samples": 8,
            "epochs": EPOCHS, "batch_size": 8, "max_seq_length": 128, "output": str(output), **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_exe() -> Path:
    exe = Path(sys.executable).with_name("mlflow")
    if not exe.is_file():
        pytest.skip(f"no mlflow executable beside {sys.executable}")
    return exe


def wait_for(proc: subprocess.Popen, url: str, log: Path, what: str, timeout_s: float) -> None:
    """Until ``url`` answers 200; fails when the process exits, skips when the machine is too slow."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.skip(f"{what} did not answer {url} within {timeout_s} s (machine too busy?); log tail:\n"
                        f"{log.read_text()[-1500:]}")
        time.sleep(0.5)


@contextmanager
def process_group(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A subprocess in its own process group (uvicorn/gunicorn fork workers), always stopped as a group."""
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=log.parent,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        yield proc
    finally:
        # the server (uvicorn) forks workers: stop the whole process group this fixture started
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def mlflow_server_in(tmp: Path, artifacts: list[str]) -> Iterator[str]:
    """``mlflow server`` on a free port with a SQLite backend in ``tmp``; ``artifacts``: its artifact flags."""
    port = free_port()
    argv = [str(mlflow_exe()), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp / 'db'}", *artifacts]
    # no job-runner processes
    with process_group(argv, tmp / "server.log", {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for(proc, f"{url}/health", tmp / "server.log", f"mlflow server on port {port}", SERVER_START_TIMEOUT_S)
        yield url


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server_in(tmp, ["--default-artifact-root", str(tmp / "art")]) as url:
        yield url


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder (so one mlflow.db: creating a SQLite store takes seconds) for the default-store tests;
    each test uses its own experiment in it."""
    return tmp_path_factory.mktemp("runs")


def only_run(client: MlflowClient, experiment: str) -> Any:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} was not created"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            out |= artifact_paths(client, run_id, item.path)
        else:
            out.add(item.path)
    return out


def check_tracked_run(client: MlflowClient, run: Any, result: Any) -> None:
    assert run.info.status == "FINISHED"
    assert run.info.run_name == result.output_dir.name
    params = run.data.params
    assert params["method"] == "lora"
    assert float(params["learning_rate"]) == pytest.approx(2e-3)  # the resolved method default, not "None"
    assert params["max_seq_length"] == "128"
    train_loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in train_loss] == list(range(1, EPOCHS + 1))  # one point per epoch
    assert [m.value for m in train_loss] == pytest.approx([h["train_loss"] for h in result.history])
    f1 = client.get_metric_history(run.info.run_id, "f1")
    assert [m.step for m in f1] == list(range(1, EPOCHS + 1))
    assert run.data.metrics["f1"] == pytest.approx(result.metrics["f1"])
    assert "trainable_params" in run.data.metrics and "train_time_s" in run.data.metrics
    artifacts = artifact_paths(client, run.info.run_id)
    assert {"metrics.json", "qatune.yaml", "history.json", "README.md"} <= artifacts, artifacts
    # the weights are in the run's MLflow Model (tests/test_mlflow_models.py loads it), not loose artifacts
    models = list(client.search_logged_models(experiment_ids=[run.info.experiment_id]))
    assert [m.source_run_id for m in models] == [run.info.run_id]
    assert result.metrics["mlflow_model_uri"] == f"models:/{models[0].model_id}"
    steps = client.get_metric_history(run.info.run_id, "step/loss")
    points = [p for h in result.history for p in h["steps"]]
    assert [m.step for m in steps] == [p["step"] for p in points]  # per-step curve, batched
    assert [m.value for m in steps] == pytest.approx([p["loss"] for p in points])


def test_tracking_to_an_mlflow_server(mlflow_server: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    result = qatune.train(tiny_training(tiny_model_dir, tmp_path / "server-run", tracking_uri=mlflow_server,
                                        experiment="qatune-server-test"), progress=False)
    assert not (tmp_path / "mlflow.db").exists()  # nothing local when a server is given
    client = MlflowClient(tracking_uri=mlflow_server)
    check_tracked_run(client, only_run(client, "qatune-server-test"), result)


def test_default_tracking_is_sqlite_beside_the_output(runs_dir: Path, tiny_model_dir: Path) -> None:
    result = qatune.train(tiny_training(tiny_model_dir, runs_dir / "local-run"), progress=False)
    db = runs_dir / "mlflow.db"
    assert db.is_file(), "the default store is mlflow.db in the output dir's parent"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    run = only_run(client, "qatune")  # the default experiment name
    check_tracked_run(client, run, result)
    assert run.info.artifact_uri.startswith((runs_dir / "mlartifacts").as_uri())


def test_no_tracking_writes_no_store(tmp_path: Path, tiny_model_dir: Path) -> None:
    qatune.train(tiny_training(tiny_model_dir, tmp_path / "runs" / "untracked", tracking=False, do_eval=False,
                               epochs=1), progress=False)
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert not (tmp_path / "runs" / "mlartifacts").exists()


def test_unreachable_server_does_not_fail_training(tmp_path: Path, tiny_model_dir: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracking never kills a run: one message, tracking off, the run directory is written."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    result = qatune.train(tiny_training(tiny_model_dir, tmp_path / "run", tracking_uri=uri, do_eval=False,
                                        epochs=1), progress=False)
    assert result.status == "finished" and (tmp_path / "run" / "metrics.json").is_file()
    err = capsys.readouterr().err
    assert err.count("MLflow tracking disabled after an error") == 1 and uri in err


def _failing_loss(self, span_model, batch):
    raise RuntimeError("simulated failure inside the training loop")


def test_run_left_open_by_a_failed_training_does_not_block_the_next(runs_dir: Path, tiny_model_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from qatune.tasks.extractive_qa.task import ExtractiveQATask

    experiment = "qatune-left-open"
    with monkeypatch.context() as patch:
        patch.setattr(ExtractiveQATask, "loss", _failing_loss)
        with pytest.raises(RuntimeError, match="simulated failure"):
            qatune.train(tiny_training(tiny_model_dir, runs_dir / "fails", do_eval=False, experiment=experiment),
                         progress=False)
    try:
        result = qatune.train(tiny_training(tiny_model_dir, runs_dir / "works", do_eval=False, epochs=1,
                                            experiment=experiment), progress=False)
        assert result.status == "finished"
        client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
        exp = client.get_experiment_by_name(experiment)
        runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
        assert runs["works"].info.status == "FINISHED"
        assert runs["works"].data.metrics.get("train_loss") is not None
        assert runs["fails"].info.status == "FAILED"  # closed when the next training started
        assert mlflow.active_run() is None
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run("FAILED")


def test_failed_training_marks_the_run_failed(runs_dir: Path, tiny_model_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from qatune.tasks.extractive_qa.task import ExtractiveQATask

    experiment = "qatune-fails"
    monkeypatch.setattr(ExtractiveQATask, "loss", _failing_loss)
    try:
        with pytest.raises(RuntimeError, match="simulated failure"):
            qatune.train(tiny_training(tiny_model_dir, runs_dir / "fails-once", do_eval=False, experiment=experiment),
                         progress=False)
        assert mlflow.active_run() is None
        client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
        run = only_run(client, experiment)
        assert run.info.status == "FAILED"
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run("FAILED")
