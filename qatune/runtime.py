"""Device, precision and process-group helpers shared by training, evaluation and inference."""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from typing import Any, Iterator


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """AMX / AVX512-BF16 CPUs run bf16 matmuls natively; elsewhere bf16 autocast is slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_device(requested: str = "auto") -> Any:
    import torch

    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from qatune.errors import ConfigError

            raise ConfigError("device=cuda was requested but no CUDA GPU is available; use device=cpu")
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device(requested if ":" in requested else f"cuda:{local_rank}")
    return torch.device("cpu")


def resolve_precision(precision: str, device: Any) -> str:
    """``auto`` -> bf16 where the hardware runs it natively (CUDA with bf16, CPU with AMX), else fp32."""
    import torch

    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


@contextlib.contextmanager
def autocast(device: Any, precision: str) -> Iterator[None]:
    import torch

    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def is_main_process() -> bool:
    return rank() == 0


def set_threads(num_threads: int | None) -> None:
    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
