"""Experiment tracking: MLflow (on by default, to a local SQLite store beside the runs) and TensorBoard
(``tracking: [mlflow, tensorboard]``); off with ``--no-tracking`` / ``tracking: false``.

Only the main process logs. MLflow is imported lazily (it is slow to import) and a tracking failure
never kills a training run: it is reported once and tracking is switched off. Per-step curves (training
loss, its EMA, learning rate) go to MLflow in batches and to ``<run>/tensorboard/`` (see
:mod:`qatune.tracking.tensorboard`); the trained run is logged as an MLflow Model
(:mod:`qatune.tracking.mlflow_model`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from qatune.runtime import is_main_process

PARENT_RUN_ENV = "QATUNE_PARENT_RUN_ID"  # parent MLflow run id for nested runs (set by qatune compare)
TRACKERS = ("mlflow", "tensorboard")
STEP_FLUSH_EVERY = 50  # per-step MLflow metrics are sent in batches: one request per N steps, not per step


def tracking_backends(value: Any) -> list[str]:
    """The trackers a ``tracking`` config value turns on: ``true`` is MLflow alone (the default before
    TensorBoard existed), ``false``/``null`` none, a name, comma-separated names or a list of names those.
    Raises ValueError naming an unknown tracker."""
    if value is None or value is False:
        return []
    if value is True:
        return ["mlflow"]
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{value!r} is not true, false or a list of trackers ({', '.join(TRACKERS)})")
    out: list[str] = []
    for name in names:
        norm = str(name).strip().lower()
        if norm not in TRACKERS:
            raise ValueError(f"unknown tracker {name!r}; trackers: {', '.join(TRACKERS)} (or true / false)")
        if norm not in out:
            out.append(norm)
    return out


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{output_dir.resolve().parent / 'mlflow.db'}"


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


# runs this process started and has not ended: a training that died with an exception leaves its run
# active in MLflow's in-process stack, which would block the next training's start_run
_OPEN_RUNS: dict[str, str] = {}  # run id -> tracking URI


def _end_leftover_run(mlflow: Any) -> None:
    """End (FAILED) a run of ours that a training which raised left active; never a user's own run."""
    active = mlflow.active_run()
    if active is None or active.info.run_id not in _OPEN_RUNS:
        return
    uri = _OPEN_RUNS.pop(active.info.run_id)
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.end_run(status="FAILED")  # pops the run first, so even a failure below leaves it inactive
    except Exception:  # noqa: BLE001 - best effort: that store may be gone
        pass


class Tracker:
    """The trackers of one training (or comparison) run; ``tracking`` is the config value (bool or names)."""

    def __init__(self, tracking: Any, output_dir: Path, uri: str | None = None, experiment: str = "qatune",
                 run_name: str | None = None) -> None:
        backends = tracking_backends(tracking)
        main = is_main_process()
        self.enabled = "mlflow" in backends and main
        self.tensorboard: Any = None
        if "tensorboard" in backends and main:
            from qatune.tracking.tensorboard import TensorBoardLogger

            self.tensorboard = TensorBoardLogger(output_dir / "tensorboard")
        self.output_dir = output_dir
        self.uri = uri or default_tracking_uri(output_dir)
        self.experiment = experiment
        self.run_name = run_name or output_dir.name
        self.run_id: str | None = None
        self._mlflow: Any = None
        self._last_step = 0
        self._logged: dict[str, tuple[int, float]] = {}  # key -> (step, value) last logged
        self._pending_steps: list[tuple[int, dict[str, float]]] = []  # per-step metrics not yet sent to MLflow

    def _fail(self, exc: Exception) -> None:
        print(f"qatune: MLflow tracking disabled after an error ({self.uri}): {exc}", file=sys.stderr)
        self.enabled = False

    def start(self, params: dict[str, Any], parent_run_id: str | None = None, tags: dict[str, str] | None = None
              ) -> str | None:
        if not self.enabled:
            return None
        # `qatune compare` runs each method as a `qatune train` subprocess nested under its own run
        parent_run_id = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
        try:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            import mlflow

            self._mlflow = mlflow
            if parent_run_id is None:
                _end_leftover_run(mlflow)
            mlflow.set_tracking_uri(self.uri)
            if mlflow.get_experiment_by_name(self.experiment) is None:
                location = None
                if self.uri.startswith("sqlite:"):
                    location = (self.output_dir.resolve().parent / "mlartifacts").as_uri()
                mlflow.create_experiment(self.experiment, artifact_location=location)
            mlflow.set_experiment(self.experiment)
            run = mlflow.start_run(run_name=self.run_name, nested=parent_run_id is not None,
                                   parent_run_id=parent_run_id, tags=tags)
            self.run_id = run.info.run_id
            _OPEN_RUNS[self.run_id] = self.uri
            flat: dict[str, Any] = {}
            _flatten("", params, flat)
            mlflow.log_params({k: ("" if v is None else str(v))[:500] for k, v in flat.items()})
        except Exception as exc:  # noqa: BLE001 - tracking must never fail training
            self._fail(exc)
        return self.run_id

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log numeric metrics at ``step``.

        Without a step (final/summary metrics) they go to the last step logged, not to step 0 (which would
        put the final value before the first epoch in MLflow's charts), and a metric already logged there
        with the same value is not logged again (so ``train_loss`` has one point per epoch).
        """
        if self.tensorboard is not None and step is not None:
            self.tensorboard.log_epoch(metrics)
        if not self.enabled:
            return
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if step is None:
            step = self._last_step
            numeric = {k: v for k, v in numeric.items() if self._logged.get(k) != (step, v)}
        else:
            self._last_step = max(self._last_step, step)
        self._logged.update({k: (step, v) for k, v in numeric.items()})
        if not numeric:
            return
        try:
            self._mlflow.log_metrics(numeric, step=step)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Per-optimizer-step curves (``loss``, ``loss_ema``, ``learning_rate``): TensorBoard at once, MLflow
        as ``step/<name>`` in batches (a request per step would slow a run against a remote server)."""
        if self.tensorboard is not None:
            self.tensorboard.log_step(step, values)
        if not self.enabled:
            return
        self._pending_steps.append((step, values))
        if len(self._pending_steps) >= STEP_FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Send buffered per-step metrics to MLflow (called every STEP_FLUSH_EVERY steps and at epoch ends)."""
        if self.tensorboard is not None:
            self.tensorboard.flush()
        if not self.enabled or not self._pending_steps or self.run_id is None:
            self._pending_steps.clear()
            return
        pending, self._pending_steps = self._pending_steps, []
        try:
            import time

            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient

            now = int(time.time() * 1000)
            batch = [Metric(f"step/{key}", float(value), now, step) for step, values in pending
                     for key, value in values.items()]
            client = MlflowClient(tracking_uri=self.uri)
            for i in range(0, len(batch), 1000):  # MLflow's log_batch limit is 1000 metrics per request
                client.log_batch(self.run_id, metrics=batch[i: i + 1000], synchronous=True)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        try:
            for path in paths:
                if path.is_dir():
                    self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
                elif path.is_file():
                    self._mlflow.log_artifact(str(path), artifact_path=artifact_path)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def log_model(self, data_dir: Path, input_example: Any, output_example: Any, register_as: str | None) -> Any:
        """Log a staged run directory as this run's MLflow pyfunc model (:mod:`qatune.tracking.mlflow_model`);
        raises on failure (the caller reports it: :func:`qatune.inference.pyfunc.log_run_model`)."""
        from qatune.tracking.mlflow_model import log_model

        self._mlflow.set_tracking_uri(self.uri)
        return log_model(data_dir, input_example, output_example, register_as)

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self._mlflow is not None and self.run_id is not None:
            try:
                self._mlflow.end_run(status=status)
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
            _OPEN_RUNS.pop(self.run_id, None)
