"""``qatune evaluate``: a trained run on labelled data -> the task's metrics and prediction files."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from qatune import rundir
from qatune.artifacts import RUN_CONFIG, read_run_config, write_json
from qatune.core.jsonio import finite_or_null


def evaluate_run(run_dir: str | os.PathLike, data: str, max_eval_samples: int | None = None,
                 output: str | os.PathLike | None = None, batch_size: int = 64, device: str = "auto",
                 precision: str = "auto", progress: bool = True, split: str | None = "validation",
                 task: str | None = None, backend: str | None = None, **task_options: Any) -> dict[str, Any]:
    """Evaluate and write ``metrics.json`` plus the task's files (QA: ``predictions.json``, and
    ``na_probs.json`` for v2) to ``output``. ``task_options`` go to the task's predictor, e.g.
    ``null_threshold`` (QA: for SQuAD v2 data the no-answer threshold is tuned on this data unless given).

    ``output`` follows qatune's write rule (qatune/rundir.py): a new or empty folder or an earlier
    evaluation; never the run itself (its metrics.json holds the training metrics) nor a folder holding the
    run or its base model. A subfolder of the run (``RUN/eval``) is fine: it touches none of the run's files.

    ``task``: with a run, it must be the run's task; with a model that is not a run (an alias, a model
    folder), the base model is evaluated as it is under ``backend`` (zero-shot), which only a task that
    declares ``zero_shot`` allows.
    ``backend``: load the model with this backend instead of the run's own (e.g. a native run under hf);
    for a zero-shot model, the backend to load it with (default hf).
    """
    from qatune.config import RANGES
    from qatune.inference.loader import BATCH_SIZE, is_run, load_base_predictor, load_predictor, task_of
    from qatune.ranges import check_option
    from qatune.runtime import check_device
    from qatune.tasks import canonical_task_name, get_task
    from qatune.tasks.base import write_result_file

    # every option before anything is read or written: NaN would reach metrics.json, 0 windows per batch
    # would run without a word
    check_option("max_eval_samples", max_eval_samples, RANGES["max_eval_samples"], integer=True)
    check_option("batch_size", batch_size, BATCH_SIZE, integer=True)
    check_device(device)
    if backend is not None:
        from qatune.backends import get_backend

        get_backend(backend)  # an unknown name fails before anything is read
    zero_shot = task is not None and not is_run(run_dir)
    if zero_shot:
        chosen = get_task(task)
        from qatune.tasks.base import supports_zero_shot

        if not supports_zero_shot(chosen):  # before the data is read
            load_base_predictor(str(run_dir), chosen.name, backend)  # raises, naming the task and what to do
    else:
        chosen = task_of(read_run_config(run_dir))
        if task is not None and canonical_task_name(task) != chosen.name:
            from qatune.errors import ConfigError

            raise ConfigError(f"--task {task}: {run_dir} is a run of task '{chosen.name}'; drop --task or pass a "
                              f"run of task '{canonical_task_name(task)}'")
    options = {k: v for k, v in task_options.items() if v is not None}
    chosen.check_options(options)  # the task's own (QA: null_threshold)
    guard: dict[str, Any] = {}
    if output and zero_shot:
        guard = {"models": [str(run_dir)]}
        rundir.check_output(output, "evaluation", **guard)
    elif output:
        run_cfg = read_run_config(run_dir) if (Path(run_dir) / RUN_CONFIG).is_file() else {}
        guard = {"models": [run_cfg.get("base_model_path")], "source_run": run_dir}
        rundir.check_output(output, "evaluation", **guard)  # before anything loads: fail fast, change nothing
    examples, report = chosen.read(data, max_eval_samples, split=split)
    print(f"qatune: {report.summary()}", file=sys.stderr, flush=True)
    if zero_shot:
        predictor = load_base_predictor(str(run_dir), chosen.name, backend or "hf", device=device, precision=precision)
    else:
        predictor = load_predictor(run_dir, device=device, precision=precision, backend=backend)
    out = rundir.prepare_output(output, "evaluation", **guard) if output else None
    t0 = time.perf_counter()
    result = predictor.evaluate(examples, batch_size=batch_size, progress=progress, report=report, **options)
    metrics = dict(result.metrics)
    metrics.update({"eval_time_s": round(time.perf_counter() - t0, 3), "data": str(data)})
    # a diverged model's NaN scores are written (and returned) as strict JSON null, with where they were
    metrics, bad = finite_or_null(metrics)
    files = {}
    for name, content in result.files.items():
        files[name], bad_file = finite_or_null(content, name)
        bad += bad_file
    if bad:
        metrics["non_finite"] = bad[:20]
    if out is not None:
        for name, content in files.items():
            if name != "metrics.json":
                write_result_file(out / name, content)
        write_json(out / "metrics.json", metrics, strict=True)
        rundir.record(out, "evaluation", [*(n for n in result.files if n != "metrics.json"), "metrics.json"])
    return metrics
