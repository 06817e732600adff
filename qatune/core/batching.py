"""Batching of tokenized windows, for any task whose features are ragged ``input_ids`` (+ segment ids).

Features are stored unpadded, so a batch is padded only to its longest member (dynamic padding). One
padding function feeds both PyTorch (``collate``) and ONNX Runtime, so both see identical inputs.
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

import numpy as np

# On CPU an inference batch is cut where a window is shorter than this share of the batch's longest
# (inference_batches): at most ~10% of the computed tokens are padding.
CPU_MIN_FILL = 0.9


class Windows(Protocol):
    """What batching needs from a task's features: ragged token ids and, if the model uses them, segments."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None

    def __len__(self) -> int: ...

    @property
    def lengths(self) -> np.ndarray: ...


def pad_windows(features: Windows, indices: Sequence[int], pad_token_id: int, multiple: int = 8,
                input_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """int64 ``input_ids``/``attention_mask`` (+ ``token_type_ids`` when the features have them) for the
    windows ``indices``, padded to their longest (rounded up to ``multiple``). ``input_names`` selects
    (and for ``token_type_ids`` forces, as zeros) the arrays a graph takes."""
    longest = max(len(features.input_ids[i]) for i in indices)
    width = -(-longest // multiple) * multiple
    n = len(indices)
    ids = np.full((n, width), pad_token_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    want_types = features.token_type_ids is not None or (input_names is not None and "token_type_ids" in input_names)
    types = np.zeros((n, width), dtype=np.int64) if want_types else None
    for row, i in enumerate(indices):
        length = len(features.input_ids[i])
        ids[row, :length] = features.input_ids[i]
        mask[row, :length] = 1
        if types is not None and features.token_type_ids is not None:
            types[row, :length] = features.token_type_ids[i]
    arrays = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        arrays["token_type_ids"] = types
    if input_names is not None:
        for name in input_names:  # a task's extra input (tabular features): one row per window, stacked
            if name not in arrays:
                rows = getattr(features, name, None)
                if rows is None:
                    raise ValueError(f"the model takes an input '{name}' that these features do not carry")
                arrays[name] = np.stack([np.asarray(rows[i]) for i in indices])
        return {name: arrays[name] for name in input_names}
    return arrays


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, group: bool = True,
                           megabatch_factor: int = 50) -> list[list[int]]:
    """Shuffled batches of similar-length windows (less padding), in a seeded, reproducible order.

    Indices are shuffled, cut into mega-batches of ``megabatch_factor * batch_size``, each sorted by
    length and cut into batches; the batch order is then shuffled so long and short batches mix.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    if not group:
        return [order[i: i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    mega = batch_size * megabatch_factor
    batches: list[list[int]] = []
    for lo in range(0, len(order), mega):
        block = order[lo: lo + mega]
        block = block[np.argsort(-lengths[block], kind="stable")]
        batches.extend(block[i: i + batch_size].tolist() for i in range(0, len(block), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def sorted_batches(lengths: np.ndarray, batch_size: int, min_fill: float = 0.0) -> Iterator[list[int]]:
    """Evaluation batches sorted by length: the least padding, order does not matter for inference.

    ``min_fill`` > 0 also starts a new batch when a window is shorter than ``min_fill`` times the batch's
    longest one, which bounds the padding any batch computes. A few hundred sorted windows hardly ever
    trip it; a server's micro-batch of a dozen random questions (100 to 384 tokens) otherwise pads every
    window to the longest and spends up to twice the compute on padding. On a CPU, where the cost of a
    forward pass follows its padded tokens and a batch-1 pass is nearly as efficient, that is pure loss.
    """
    order = np.argsort(-lengths, kind="stable")
    batch: list[int] = []
    for i in order.tolist():  # longest first, so batch[0] is the batch's longest window
        if batch and (len(batch) >= batch_size or lengths[i] < min_fill * lengths[batch[0]]):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def inference_batches(lengths: np.ndarray, batch_size: int, on_cpu: bool) -> list[list[int]]:
    """The batches every runner (PyTorch, ONNX Runtime) computes: sorted by length, and on a CPU, whose
    cost follows padded tokens, with padding bounded by ``CPU_MIN_FILL`` (GPUs pad cheaply and prefer
    fewer, larger launches)."""
    return list(sorted_batches(lengths, batch_size, CPU_MIN_FILL if on_cpu else 0.0))
