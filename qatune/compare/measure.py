"""What a comparison measures besides accuracy: inference latency and throughput, size on disk, memory.

Latency and throughput go through the public predictor (``qatune.load(run).predict_batch``), so they are
end to end: tokenization and windowing, the forward pass and decoding (QA: answer spans). Adapters that can be merged
(LoRA, LoHa, IA3) are merged into the base weights first, as ``qatune.load`` does for serving; prefix and
prompt methods keep their extra virtual tokens and pay for them here.
"""

from __future__ import annotations

import gc
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def load_eval_items(source: str, limit: int, task: str | None = None) -> list[Any]:
    """The first ``limit`` evaluation examples as the task's request items (QA: question + context)."""
    from qatune.tasks import get_task

    if limit <= 0:
        return []
    spec = get_task(task)
    examples, _ = spec.read(source, limit, split="validation")
    return [spec.to_request(ex) for ex in examples]


def weights_size_mb(run_dir: Path) -> float:
    """MB (2**20 bytes) of the weight files a run saved: the adapter for PEFT, the whole model for full."""
    total = sum(p.stat().st_size for p in Path(run_dir).iterdir()
                if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) and not p.name.startswith("training_"))
    return total / 2**20


def peak_memory(metrics: dict[str, Any]) -> tuple[float | None, str]:
    """Peak memory of the training process: CUDA max allocated on GPU, else the process's peak RSS."""
    if isinstance(metrics.get("cuda_max_allocated_mb"), (int, float)):
        return float(metrics["cuda_max_allocated_mb"]), "cuda_max_allocated"
    if isinstance(metrics.get("peak_rss_mb"), (int, float)):
        return float(metrics["peak_rss_mb"]), "cpu_peak_rss"
    return None, ""


def _quiet_load(run_dir: Path, device: str) -> Any:
    """``qatune.load`` without the weight-loading bars and deprecation warnings on the comparison's stderr."""
    from transformers.utils import logging as hf_logging

    import qatune

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return qatune.load(str(run_dir), device=device)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def measure_run(run_dir: Path, pairs: list[Any], device: str = "auto", latency_questions: int = 50,
                throughput_questions: int = 256, throughput_batch_size: int = 32, warmup: int = 3) -> dict[str, Any]:
    """Batch-1 latency p50/p95 (ms) over the first ``latency_questions`` pairs and throughput (questions/s)
    at ``throughput_batch_size`` over up to ``throughput_questions`` pairs."""
    import torch

    result: dict[str, Any] = {"latency_questions": 0, "throughput_questions": 0}
    if not pairs or (latency_questions <= 0 and throughput_questions <= 0):
        return result
    t0 = time.perf_counter()
    pipe = _quiet_load(run_dir, device)
    result["load_time_s"] = round(time.perf_counter() - t0, 3)
    result["device"] = str(getattr(pipe.runner, "device", device))
    try:
        with torch.inference_mode():
            single = pairs[:latency_questions]
            if single:
                for pair in single[:warmup]:
                    pipe.predict_batch([pair], batch_size=1)
                times = []
                for pair in single:
                    t = time.perf_counter()
                    pipe.predict_batch([pair], batch_size=1)
                    times.append((time.perf_counter() - t) * 1000)
                result.update(latency_questions=len(times), latency_p50_ms=float(np.percentile(times, 50)),
                              latency_p95_ms=float(np.percentile(times, 95)),
                              latency_mean_ms=float(np.mean(times)))
            many = pairs[:throughput_questions]
            if many:
                if warmup:
                    pipe.predict_batch(many[:throughput_batch_size], batch_size=throughput_batch_size)
                t = time.perf_counter()
                pipe.predict_batch(many, batch_size=throughput_batch_size)
                elapsed = time.perf_counter() - t
                result.update(throughput_questions=len(many), throughput_batch_size=throughput_batch_size,
                              throughput_qps=len(many) / max(elapsed, 1e-9))
    finally:
        del pipe
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result
