"""Capture and restore every RNG qatune draws from (Python, numpy, torch, CUDA) in one place.

Checkpoints save rank 0's state and distributed runs gather every rank's, so both use these two helpers.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):
            torch.cuda.set_rng_state_all(cuda)
        else:  # a single device's state (older checkpoints of distributed runs)
            torch.cuda.set_rng_state(cuda)
