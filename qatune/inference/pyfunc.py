"""qatune's MLflow pyfunc loader module: a run directory as an MLflow ``python_function`` model.

``mlflow.pyfunc.load_model("models:/NAME/3")`` and ``mlflow models serve`` import this module and call
:func:`_load_pyfunc` on the model's data (the run's files). ``predict`` takes a DataFrame whose columns are
the task's request fields (``Task.request_fields``; extractive QA: ``question``, ``context``), reads each
row through ``Task.parse_request`` (the same checks as ``qatune predict`` and ``qatune serve``) and returns
one row per input with ``Task.format_response``'s fields (QA: ``text``, ``score``, ``start``, ``end``,
``no_answer``). No task-specific code here.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from qatune.errors import QatuneError
from qatune.inference.loader import load_predictor

# what is left out of the model's copy of a run: training state and logs, not needed to load it
_NOT_MODEL_FILES = frozenset({"checkpoint", "checkpoint.tmp", "checkpoint.old", "tensorboard"})


class QatunePyfunc:
    """The object ``_load_pyfunc`` returns; MLflow wraps it (schema checks) and calls ``predict``."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.task = predictor.task

    def _items(self, model_input: Any) -> list[Any]:
        if hasattr(model_input, "to_dict"):  # a pandas DataFrame (what MLflow passes for a column schema)
            rows = model_input.to_dict(orient="records")
        elif isinstance(model_input, dict):
            rows = [model_input]
        else:
            rows = list(model_input)
        items = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise _invalid(f"row {i}: expected an object with the fields {', '.join(self.task.request_fields)}")
            payload = {k: v for k, v in row.items() if k in self.task.request_fields and not _missing(v)}
            items.append(self.task.parse_request(payload, f"row {i}"))
        return items

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        try:
            items = self._items(model_input)
            predictions = self.predictor.predict_batch(items) if items else []
        except QatuneError as exc:
            raise _invalid(str(exc)) from None
        rows = []
        for prediction in predictions:
            response = self.task.format_response(prediction)
            rows.append(response if isinstance(response, dict) else {"prediction": response})
        return pd.DataFrame(rows)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _invalid(message: str) -> Exception:
    """A bad request: MLflow's serving answers it with HTTP 400 and the message."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _load_pyfunc(data_path: str) -> QatunePyfunc:
    """MLflow's loader-module entry point: ``data_path`` is the run directory inside the model."""
    return QatunePyfunc(load_predictor(data_path))


def stage_run(run_dir: Path, into: Path) -> Path:
    """Copy the run's files (not its checkpoint or TensorBoard logs) to ``into/<run name>``: the model's data."""
    staged = into / run_dir.resolve().name
    staged.mkdir(parents=True)
    for item in sorted(run_dir.iterdir()):
        if item.is_file() and item.name not in _NOT_MODEL_FILES and not item.name.startswith(".qatune-write-test"):
            shutil.copy2(item, staged / item.name)
    return staged


def log_run_model(tracker: Any, run_dir: Path, request: dict[str, Any], register_as: str | None = None) -> Any:
    """Log a finished run as its MLflow run's pyfunc model (and register it as a new version of
    ``register_as``). ``request``: one example request (the task's request fields), the model's input
    example; its answer, computed here by the model as MLflow will load it, gives the output signature.
    Returns MLflow's ModelInfo, or None when tracking is off or failed (reported once, never raised)."""
    if not tracker.enabled:
        return None
    import pandas as pd

    try:
        with tempfile.TemporaryDirectory(prefix="qatune-mlflow-stage-") as tmp:
            staged = stage_run(run_dir, Path(tmp))
            example = pd.DataFrame([request])
            answer = _load_pyfunc(str(staged)).predict(example)
            return tracker.log_model(staged, example, answer, register_as)
    except Exception as exc:  # noqa: BLE001 - tracking never fails a finished training
        tracker._fail(exc)
        return None
