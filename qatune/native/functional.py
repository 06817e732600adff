"""Functional pieces shared by the native BERT and its LoRA layers (no model code, so both can import it)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import torch

# (rows of the padded B x L grid, flat indices of the real tokens) while a padding-skipping forward runs
_PACKED: contextvars.ContextVar[tuple[int, torch.Tensor] | None] = contextvars.ContextVar("_PACKED", default=None)


@contextlib.contextmanager
def packed_rows(grid_rows: int, index: torch.Tensor) -> Iterator[None]:
    """While a forward pass runs on the real tokens only (``[T, H]``, ``index`` into the ``B x L`` grid),
    dropout draws its mask over the whole grid and keeps the real tokens' rows. The RNG stream and the
    masks at real tokens are then those of the padded model, so skipping padding changes the speed of a
    seeded training run, not its trajectory (measured: equal losses to 6 decimals, docs/benchmarks.md)."""
    token = _PACKED.set((grid_rows, index))
    try:
        yield
    finally:
        _PACKED.reset(token)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout that costs nothing (no call, no RNG) when it is off, and less than ``F.dropout`` when on.

    The keep mask is drawn with ``bernoulli_`` in the same order ``F.dropout`` draws it, so a seeded run drops
    the same elements as Hugging Face's model; the value is the same ``x * noise`` (noise = 0 or
    ``1 / (1 - p)`` rounded to the tensor's dtype, as ``F.dropout`` rounds it). On CPU ``F.dropout`` also
    divides a float noise tensor in a separate pass; measured 44 ms vs 19 ms for a 16 x 96 x 384 tensor.
    """
    if not training or p <= 0:
        return x
    if p >= 1:
        return x * 0.0
    packed = _PACKED.get()
    if packed is not None and x.dim() == 2 and x.shape[0] == packed[1].numel():
        grid = torch.empty((packed[0], x.shape[1]), dtype=torch.bool, device=x.device).bernoulli_(1 - p)
        keep = grid.index_select(0, packed[1])
    else:
        keep = torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1 - p)
    return x * keep.to(x.dtype).mul_(_keep_scale(p, x.dtype))


@functools.lru_cache(maxsize=None)
def _keep_scale(p: float, dtype: torch.dtype) -> float:
    """``1 / (1 - p)`` rounded as ``F.dropout`` rounds it (1 divided by ``1 - p`` in the tensor's dtype)."""
    return float(torch.ones((), dtype=dtype).div_(1 - p))
