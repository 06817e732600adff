"""Running a QA model over features: batched, length-sorted, bf16 where available, no autograd."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qatune.runtime import autocast
from qatune.tasks.extractive_qa.features import QAFeatures, collate, inference_batches
from qatune.tasks.extractive_qa.modeling import INPUT_KEYS, QASpanModel, span_loss


@torch.inference_mode()
def predict_logits(span_model: QASpanModel, features: QAFeatures, pad_token_id: int, batch_size: int = 64,
                   device: Any = None, precision: str = "fp32", progress: bool = False,
                   with_loss: bool = False) -> tuple[list[np.ndarray], list[np.ndarray], float | None]:
    """Start/end logits per window (unpadded, float32) and, with labels, the mean validation loss."""
    from tqdm.auto import tqdm

    device = device or torch.device("cpu")
    was_training = span_model.training
    span_model.eval()
    starts: list[np.ndarray] = [np.zeros(0, np.float32)] * len(features)
    ends: list[np.ndarray] = [np.zeros(0, np.float32)] * len(features)
    lengths = features.lengths
    loss_sum, loss_n = 0.0, 0
    with_loss = with_loss and features.start_positions is not None
    batches = inference_batches(lengths, batch_size, on_cpu=torch.device(device).type == "cpu")
    # One autocast region for all batches: autocast caches the bf16 copies of fp32 weights until it exits,
    # so the weights are cast once per call instead of once per batch (same numbers either way).
    with autocast(device, precision):
        for indices in tqdm(batches, desc="evaluating", unit="batch", disable=not progress, leave=False):
            batch = collate(features, indices, pad_token_id, with_labels=with_loss)
            inputs = {k: batch[k].to(device) for k in INPUT_KEYS if k in batch}
            start, end = span_model(**inputs)
            if with_loss:
                loss = span_loss(start, end, batch["start_positions"].to(device), batch["end_positions"].to(device))
                loss_sum += float(loss) * len(indices)
                loss_n += len(indices)
            start_np = start.float().cpu().numpy()
            end_np = end.float().cpu().numpy()
            for row, i in enumerate(indices):
                n = int(lengths[i])
                starts[i] = start_np[row, :n]
                ends[i] = end_np[row, :n]
    span_model.train(was_training)
    return starts, ends, (loss_sum / loss_n if loss_n else None)
