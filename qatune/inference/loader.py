"""Loading a run for inference: ``qatune.load(path)`` -> the run's task predictor over a runner.

A *runner* computes the task's outputs per window (features in, unpadded float32 arrays out): the
PyTorch runner below, or ONNX Runtime for an exported run (:mod:`qatune.inference.onnx_runner`). The
predictor (the task's) does the pre- and post-processing, so a PyTorch model and its ONNX export answer
through exactly the same code. The model comes from the run's backend, the predictor from its task;
this module is where they meet.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from qatune.artifacts import read_run_config
from qatune.backends import get_backend
from qatune.errors import ConfigError, ModelError
from qatune.inference.onnx_runner import is_onnx_export, load_onnx_export
from qatune.tasks import Task, get_task
from qatune.tasks.base import BATCH_SIZE, Outputs, Predictor, Runner  # noqa: F401 - BATCH_SIZE re-exported

PRECISIONS = ("auto", "bf16", "fp32")  # of a PyTorch run; an ONNX export's loader knows its own


class TorchRunner:
    """A PyTorch model (as the backend built it) as a runner, through the task's forward pass.

    With bf16 and ``bf16_weights`` the weights are converted to bf16 once: autocast alone re-casts every fp32
    weight on every call. The conversion changes ``model`` in place, so only a caller that owns the model
    asks for it (``load_predictor`` does); the default leaves a shared model as it is. The outputs come
    back as float32 either way.
    """

    def __init__(self, model: Any, tokenizer: Any, device: str = "auto", precision: str = "auto",
                 bf16_weights: bool = False, task: Task | None = None) -> None:
        import torch

        from qatune import runtime

        self.task = task or get_task()
        self.device = runtime.pick_device(device)
        self.precision = runtime.resolve_precision(precision, self.device)
        self.span_model = self.task.wrap(model).to(self.device).eval()
        if self.precision == "bf16" and bf16_weights:
            self.span_model.to(torch.bfloat16)
        self.pad_token_id = tokenizer.pad_token_id

    def __call__(self, features: Any, batch_size: int, progress: bool = False) -> Outputs:
        return self.task.run_windows(self.span_model, features, self.pad_token_id, batch_size, self.device,
                                     self.precision, progress=progress)


# Loaders for run directories that are not backend runs (e.g. ONNX exports): (predicate, factory), the
# factory returning (runner, tokenizer, run_config).
RUNNER_LOADERS: list[tuple[Callable[[Path], bool], Callable[..., tuple[Runner, Any, dict[str, Any]]]]] = [
    (is_onnx_export, load_onnx_export),
]


def task_of(run_cfg: dict[str, Any], run_dir: str | os.PathLike | None = None) -> Task:
    """The run's task, bound to its settings (and, given ``run_dir``, to the task's own files there)."""
    from qatune.tasks.base import bind_task

    return bind_task(get_task(str(run_cfg.get("task") or "extractive_qa")), run_cfg, run_dir)


def run_task(run_dir: str | os.PathLike) -> Task:
    """The task of a run (or export) directory, from its ``qatune.yaml`` (ModelError when it is no run)."""
    return task_of(read_run_config(run_dir))


def is_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run or export directory (what ``qatune train``/``export`` wrote)."""
    from qatune.artifacts import RUN_CONFIG

    return (Path(path) / RUN_CONFIG).is_file()


def load_base_predictor(model: str, task_name: str, backend: str = "hf", device: str = "auto",
                        precision: str = "auto", max_seq_length: int = 384, **options: Any) -> Predictor:
    """A predictor over a base model as it is (no trained run): only for a task that declares
    ``zero_shot`` (a fresh, untrained head predicts nothing meaningful; the refusal says to train first)."""
    import dataclasses

    from qatune.runtime import check_device
    from qatune.tasks.base import supports_zero_shot

    check_device(device)
    task = get_task(task_name)
    if not supports_zero_shot(task):
        raise ConfigError(f"task '{task.name}' has no zero-shot use: {model} is not a qatune run, and a base "
                          f"model's fresh {task.model.head} head would predict at random. Train first "
                          f"(qatune train --task {task.name} --model {model} ...) and pass the run directory")
    options = {k: v for k, v in options.items() if v is not None}
    task.check_options(options)
    if precision not in PRECISIONS:
        raise ConfigError(f"option 'precision' (--precision): {precision!r} is not one of {', '.join(PRECISIONS)}")
    try:
        chosen = get_backend(backend)
    except ConfigError as exc:
        raise ModelError(str(exc)) from None
    path = chosen.resolve_model(model)
    defaults = task.resolve_options({}, {"max_seq_length": max_seq_length}, "zero-shot")
    run_cfg: dict[str, Any] = {"model": model, "base_model_path": str(path), "method": "none", "task": task.name,
                               "backend": chosen.name, "max_seq_length": max_seq_length,
                               task.section: dataclasses.asdict(defaults), "zero_shot": True}
    backend_options = chosen.options_type()
    tokenizer = chosen.load_tokenizer(path, task.model, backend_options)
    base = chosen.load_base(path, task.model, backend_options, attention_dropout=0.0)
    runner = TorchRunner(base, tokenizer, device, precision, bf16_weights=True, task=task)
    return task.predictor(runner, tokenizer, run_cfg, **options)


def load_run_model(run_dir: str | os.PathLike, merge: bool = True, attention_dropout: float | None = 0.0,
                   backend: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer, run_config)`` from a run dir, by the run's backend (or ``backend``: runs of every
    backend are standard Hugging Face / PEFT files, so another backend may load them); adapters merged
    when possible."""
    from qatune.methods import registry

    path = Path(run_dir)
    run_cfg = read_run_config(path)
    task = task_of(run_cfg, path)
    try:
        method = registry.get(str(run_cfg.get("method", "full")))
        engine = get_backend(str(backend or run_cfg.get("backend") or "hf"))
    except ConfigError as exc:
        raise ModelError(f"{path}: {exc}") from None
    model, tokenizer = engine.load_run(path, run_cfg, task.model, method, merge=merge,
                                        attention_dropout=attention_dropout)
    model.qatune_run_dir = str(path)  # where a task's own files are (e.g. a classifier head), for task.wrap
    return model, tokenizer, run_cfg


def load_predictor(path: str | os.PathLike, device: str = "auto", precision: str = "auto", merge: bool = True,
                   tracking_uri: str | None = None, backend: str | None = None,
                   **options: Any) -> Predictor:
    """The run's task predictor (``options`` are the task's, e.g. ``null_threshold`` for QA) over a
    PyTorch runner, or over any runner a RUNNER_LOADERS entry knows (ONNX exports).

    ``path`` may also be an MLflow model URI of a qatune run (``models:/NAME/3``, ``runs:/ID/model``): it is
    downloaded from ``tracking_uri`` (default ``MLFLOW_TRACKING_URI``) into a fresh temporary folder first.
    ``backend``: load the model with this backend instead of the one the run was trained with."""
    from qatune.runtime import check_device
    from qatune.tracking.mlflow_model import download_model, is_model_uri

    check_device(device)  # the options first: a typo fails before minutes of loading
    options = {k: v for k, v in options.items() if v is not None}
    if is_model_uri(path):
        path = download_model(str(path), tracking_uri)
    run_dir = Path(path)
    task_of(read_run_config(run_dir)).check_options(options)
    for applies, factory in RUNNER_LOADERS:
        if applies(run_dir):
            runner, tokenizer, run_cfg = factory(run_dir, device=device, precision=precision)
            return task_of(run_cfg, run_dir).predictor(runner, tokenizer, run_cfg, **options)
    if precision not in PRECISIONS:
        raise ConfigError(f"option 'precision' (--precision): {precision!r} is not a precision a PyTorch run "
                          f"runs in; use {', '.join(PRECISIONS)}")
    model, tokenizer, run_cfg = load_run_model(run_dir, merge=merge, backend=backend)
    task = task_of(run_cfg, run_dir)
    runner = TorchRunner(model, tokenizer, device, precision, bf16_weights=True, task=task)  # the model is ours alone
    return task.predictor(runner, tokenizer, run_cfg, **options)


load_pipeline = load_predictor  # the name before tasks had predictors
