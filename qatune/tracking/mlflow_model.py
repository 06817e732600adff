"""A trained run as an MLflow Model, and back: the MLflow side only (no model code here).

The model is a ``python_function`` (pyfunc) model with a *loader module*, MLflow's mechanism for models
whose code lives in an installed package: the MLmodel file names ``qatune.inference.pyfunc`` and the run
directory's files are the model's ``data``. Loading (``mlflow.pyfunc.load_model``, ``mlflow models serve``)
imports that module and calls its ``_load_pyfunc(data_path)``, which loads the run with qatune. Nothing is
pickled: no cloudpickled Python object is written or read, only the run's own files (safetensors weights,
JSON, YAML). The serving environment needs qatune installed (``--env-manager local``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from qatune.errors import ModelError

LOADER_MODULE = "qatune.inference.pyfunc"  # the pyfunc loader (a module of the installed qatune)
MODEL_NAME = "model"  # the logged model's name in its MLflow run
MODEL_URI_SCHEMES = ("models:/", "runs:/")


def is_model_uri(path: Any) -> bool:
    """``models:/NAME/VERSION`` (registry), ``models:/NAME@alias`` or ``runs:/RUN_ID/model``."""
    return isinstance(path, str) and path.startswith(MODEL_URI_SCHEMES)


def pip_requirements() -> list[str]:
    """The packages the model needs, pinned to what trained it (given explicitly: MLflow's own inference
    would load the model once more in a subprocess just to watch its imports)."""
    from importlib import metadata

    pins = []
    for name in ("mlflow", "torch", "transformers", "peft", "tokenizers", "safetensors", "numpy", "pandas",
                 "pyyaml"):
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def log_model(data_dir: Path, input_example: Any, output_example: Any, register_as: str | None) -> Any:
    """Log ``data_dir`` (a staged copy of the run's files) as the active MLflow run's pyfunc model, with a
    signature inferred from one example request and its answer; register it as a new version of
    ``register_as`` when given. Returns MLflow's ModelInfo."""
    import mlflow
    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot carry missing values. A request's fields are text (or an
        # object of features), so the only integer columns are the answer's (e.g. start/end offsets), which
        # the model always fills: the hint does not apply, and printed it reads like a problem.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(input_example, output_example)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, loader_module=LOADER_MODULE, data_path=str(data_dir), signature=signature,
            input_example=input_example, pip_requirements=pip_requirements(), registered_model_name=register_as,
            metadata={"qatune_run": data_dir.name})


def _cleanup(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def download_model(uri: str, tracking_uri: str | None = None) -> Path:
    """Download a qatune MLflow Model (``models:/NAME/3``, ``runs:/ID/model``) into a fresh temporary folder
    (removed when the process exits) and return the run directory inside it.

    The tracking/registry server is ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default.
    """
    try:
        import mlflow
    except ImportError:
        raise ModelError(f"{uri} is an MLflow model URI: loading it needs mlflow (pip install mlflow)") from None
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    dst = tempfile.mkdtemp(prefix="qatune-mlflow-model-")
    atexit.register(_cleanup, dst)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst, tracking_uri=tracking_uri,
                                                         registry_uri=tracking_uri))
    except Exception as exc:  # noqa: BLE001 - MlflowException, connection errors: all mean "cannot get it"
        where = tracking_uri or mlflow.get_tracking_uri()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"MLflow model {uri} could not be downloaded from {where}: {first}. Check the name and "
                         "version (or alias), and set MLFLOW_TRACKING_URI or tracking_uri to the server") from None
    try:
        flavor = (yaml.safe_load((local / "MLmodel").read_text()) or {}).get("flavors", {}).get("python_function", {})
    except (OSError, yaml.YAMLError):
        flavor = {}
    if flavor.get("loader_module") != LOADER_MODULE or not flavor.get("data"):
        raise ModelError(f"MLflow model {uri} is not a qatune model (its MLmodel has no python_function flavor "
                         f"with loader_module {LOADER_MODULE}); load it with mlflow.pyfunc.load_model instead")
    run_dir = local / str(flavor["data"])
    if not run_dir.is_dir():
        raise ModelError(f"MLflow model {uri} is incomplete: {flavor['data']} is missing from its files")
    return run_dir
