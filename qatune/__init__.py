"""qatune: fine-tune transformer models for question answering (and any registered task), compare
methods, ship fast models.

Public API (kept small on purpose)::

    qatune.train(config)                      # -> TrainResult (writes a run directory)
    qatune.evaluate(run_dir, data, ...)       # -> metrics dict (writes predictions/metrics)
    qatune.load(run_dir).answer(question, context)   # the run's task predictor (QA: answer / answer_batch)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "load", "train"]


def train(config: Any, progress: bool = True) -> Any:
    """Train from a TrainConfig, a dict of config keys, or a YAML path. See :mod:`qatune.training.trainer`."""
    from qatune.quiet import quieted
    from qatune.training.trainer import train as _train

    with quieted():  # only qatune's own lines and bars (QATUNE_VERBOSE=1 for the libraries' too)
        return _train(config, progress=progress)


def evaluate(run_dir: str, data: str, **kwargs: Any) -> dict[str, Any]:
    """Evaluate a trained run on labelled data of its task; see :func:`qatune.evaluation.evaluate.evaluate_run`."""
    from qatune.evaluation.evaluate import evaluate_run
    from qatune.quiet import quieted

    with quieted():
        return evaluate_run(run_dir, data, **kwargs)


def load(path: str, **kwargs: Any) -> Any:
    """Load a run directory (adapter, full model or exported ONNX), or an MLflow model URI of a run
    (``models:/NAME/3``; ``tracking_uri=`` or MLFLOW_TRACKING_URI names the server), as its task's predictor."""
    from qatune.inference.loader import load_predictor
    from qatune.quiet import quieted

    with quieted():
        return load_predictor(path, **kwargs)
