"""TensorBoard event files in ``<run>/tensorboard/`` (``tracking: [tensorboard]``).

Everything is on one x axis, the optimizer step, so the per-epoch points (evaluation metrics, the epoch's
mean training loss) sit where the epoch ended on the per-step curves:

- ``train/loss``, ``train/loss_ema``, ``train/learning_rate``: every optimizer step;
- ``train/epoch_loss`` and ``eval/<metric>`` (the task's metrics, e.g. ``eval/f1``, ``eval/eval_loss``): every epoch.

The writer is PyTorch's (``torch.utils.tensorboard``); it needs the ``tensorboard`` package (checked when
the config is read, so a missing package is a config error, not a failure after training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TB_DIR = "tensorboard"  # the folder in a run directory (recorded in its manifest)
# epoch-record keys that are not metrics on TensorBoard's step axis (or are there per step already)
_NOT_EPOCH_METRICS = frozenset({"epoch", "step", "learning_rate", "train_time_s", "steps"})


class TensorBoardLogger:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self._writer = SummaryWriter(log_dir=str(log_dir), flush_secs=30)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(f"train/{key}", float(value), global_step=step)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """One epoch's record (``history.json`` entry): at its last optimizer step."""
        step = int(record.get("step") or record.get("epoch") or 0)
        for key, value in record.items():
            if key in _NOT_EPOCH_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            tag = "train/epoch_loss" if key == "train_loss" else f"eval/{key}"
            self._writer.add_scalar(tag, float(value), global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
