"""``qatune evaluate``: a trained run on SQuAD-format data -> official metrics and prediction files."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from qatune import rundir
from qatune.artifacts import RUN_CONFIG, read_run_config, write_json

EVAL_FILES = ("predictions.json", "metrics.json", "na_probs.json")


def evaluate_run(run_dir: str | os.PathLike, data: str, max_eval_samples: int | None = None,
                 output: str | os.PathLike | None = None, null_threshold: float | None = None,
                 batch_size: int = 64, device: str = "auto", precision: str = "auto", progress: bool = True,
                 split: str | None = "validation") -> dict[str, Any]:
    """Evaluate and write ``predictions.json``, ``metrics.json`` (and ``na_probs.json`` for v2) to ``output``.

    For SQuAD v2 data the no-answer threshold is tuned on this data unless ``null_threshold`` is given.
    ``output`` follows qatune's write rule (qatune/rundir.py): a new or empty folder or an earlier
    evaluation; never the run itself (its metrics.json holds the training metrics) nor a folder holding the
    run or its base model. A subfolder of the run (``RUN/eval``) is fine: it touches none of the run's files.
    """
    from qatune.config import RANGES
    from qatune.data.squad import load_qa_examples
    from qatune.inference.pipeline import BATCH_SIZE, NULL_THRESHOLD, load_pipeline
    from qatune.ranges import check_option
    from qatune.runtime import check_device
    from qatune.tasks.qa.task import score_predictions

    # every option before anything is read or written: NaN would reach metrics.json, 0 windows per batch
    # would run without a word
    check_option("max_eval_samples", max_eval_samples, RANGES["max_eval_samples"], integer=True)
    check_option("null_threshold", null_threshold, NULL_THRESHOLD)
    check_option("batch_size", batch_size, BATCH_SIZE, integer=True)
    check_device(device)
    guard: dict[str, Any] = {}
    if output:
        run_cfg = read_run_config(run_dir) if (Path(run_dir) / RUN_CONFIG).is_file() else {}
        guard = {"models": [run_cfg.get("base_model_path")], "source_run": run_dir}
        rundir.check_output(output, "evaluation", **guard)  # before anything loads: fail fast, change nothing
    examples, report = load_qa_examples(data, max_samples=max_eval_samples, split=split)
    print(f"qatune: {report.summary()}", file=sys.stderr, flush=True)
    pipeline = load_pipeline(run_dir, device=device, precision=precision)
    out = rundir.prepare_output(output, "evaluation", **guard) if output else None
    t0 = time.perf_counter()
    decoded = pipeline.decode_examples(examples, batch_size=batch_size, progress=progress)
    version_2 = report.version == "2.0"
    result = score_predictions(examples, decoded, version_2, null_threshold)
    metrics = dict(result.metrics)
    metrics.update({"eval_questions": len(examples), "eval_time_s": round(time.perf_counter() - t0, 3),
                    "data": str(data), "squad_version": report.version})
    if out is not None:
        write_json(out / "predictions.json", result.predictions)
        write_json(out / "metrics.json", metrics)
        if version_2:
            write_json(out / "na_probs.json", result.na_probs)
        rundir.record(out, "evaluation", [n for n in EVAL_FILES if (out / n).exists()])
    return metrics
