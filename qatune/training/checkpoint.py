"""Resumable checkpoints, written atomically so an interruption never leaves a half-written one.

A checkpoint holds only what changes during training: the trainable weights, the optimizer and
scheduler state, the RNG states (so dropout masks after a resume match an uninterrupted run) and the
position in the data (epoch, step within the epoch).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from qatune.core.rng import rng_state, set_rng_state

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainerState:
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0
    train_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_loss_sum: float = 0.0
    epoch_loss_n: int = 0


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


def save_checkpoint(output_dir: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                    state: TrainerState) -> Path:
    """Write the checkpoint to ``checkpoint.tmp``, then swap it in; a crash at any point leaves one complete
    checkpoint (``checkpoint``, or ``checkpoint.tmp``/``checkpoint.old`` that :func:`has_checkpoint` and
    :func:`load_checkpoint` recover)."""
    from safetensors.torch import save_file

    _recover(output_dir)
    final = output_dir / CHECKPOINT_DIR
    tmp = output_dir / f"{CHECKPOINT_DIR}.tmp"
    old = output_dir / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        weights = {k: v.contiguous() for k, v in trainable_state_dict(model).items()}
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        # written last: its presence marks the folder complete
        (tmp / _STATE).write_text(json.dumps(asdict(state), indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays as it was
        raise
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


_STATE = "trainer_state.json"


def _recover(output_dir: Path) -> None:
    """Finish a checkpoint swap that a crash interrupted; drop incomplete leftovers."""
    final = output_dir / CHECKPOINT_DIR
    tmp = output_dir / f"{CHECKPOINT_DIR}.tmp"
    old = output_dir / f"{CHECKPOINT_DIR}.old"
    if not (final / _STATE).is_file():
        for candidate in (tmp, old):  # tmp is complete and newer when it has its state file
            if (candidate / _STATE).is_file():
                shutil.rmtree(final, ignore_errors=True)
                os.replace(candidate, final)
                break
    if (final / _STATE).is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def has_checkpoint(output_dir: Path) -> bool:
    return any((output_dir / name / _STATE).is_file()
               for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.tmp", f"{CHECKPOINT_DIR}.old"))


def load_checkpoint(output_dir: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> TrainerState:
    from safetensors.torch import load_file

    from qatune.errors import ConfigError

    _recover(output_dir)
    folder = output_dir / CHECKPOINT_DIR
    weights = load_file(str(folder / "trainable.safetensors"))
    current = model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    problems = sorted(set(weights) - set(current)) + sorted(trainable - set(weights))
    problems += [f"{k} {tuple(v.shape)} vs {tuple(current[k].shape)}" for k, v in weights.items()
                 if k in current and v.shape != current[k].shape]
    if problems:
        raise ConfigError(f"checkpoint in {folder} does not match this model/method "
                          f"(e.g. {problems[:3]}); resume with the same config or use a new --output")
    model.load_state_dict(weights, strict=False)
    optim = torch.load(folder / "optim.pt", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
    return TrainerState(**json.loads((folder / _STATE).read_text()))


def remove_checkpoint(output_dir: Path) -> None:
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.tmp", f"{CHECKPOINT_DIR}.old"):
        shutil.rmtree(output_dir / name, ignore_errors=True)
