"""``qatune evaluate``: a trained run on SQuAD-format data -> official metrics and prediction files."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from qatune.artifacts import ensure_writable_dir, write_json


def evaluate_run(run_dir: str | os.PathLike, data: str, max_eval_samples: int | None = None,
                 output: str | os.PathLike | None = None, null_threshold: float | None = None,
                 batch_size: int = 64, device: str = "auto", precision: str = "auto", progress: bool = True,
                 split: str | None = "validation") -> dict[str, Any]:
    """Evaluate and write ``predictions.json``, ``metrics.json`` (and ``na_probs.json`` for v2) to ``output``.

    For SQuAD v2 data the no-answer threshold is tuned on this data unless ``null_threshold`` is given.
    """
    from qatune.tasks.extractive_qa.predictor import load_pipeline
    from qatune.tasks.extractive_qa.squad import load_qa_examples
    from qatune.tasks.extractive_qa.task import score_predictions

    out = ensure_writable_dir(Path(output)) if output else None
    examples, report = load_qa_examples(data, max_samples=max_eval_samples, split=split)
    print(f"qatune: {report.summary()}", file=sys.stderr, flush=True)
    pipeline = load_pipeline(run_dir, device=device, precision=precision)
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
    return metrics
