"""The FLOP count behind bench/train_roofline.py's bound matches PyTorch's own FLOP counter."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from qatune.native import BertConfig, BertForQuestionAnswering

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _roofline_module():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location("train_roofline", BENCH / "train_roofline.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize(("layers", "hidden", "heads", "inner", "widths", "rows"),
                         [(2, 32, 4, 64, [24], [3]), (3, 48, 6, 96, [16, 40], [2, 5])])
def test_training_flops_match_torch_flop_counter(layers, hidden, heads, inner, widths, rows) -> None:
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inner, max_position_embeddings=64)
    model = BertForQuestionAnswering(config).train()
    counted = 0
    for width, count in zip(widths, rows, strict=True):
        ids = torch.randint(5, 100, (count, width))
        with FlopCounterMode(display=False) as counter:
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
            (out.start_logits.sum() + out.end_logits.sum()).backward()
        counted += counter.get_total_flops()
    expected = _roofline_module().training_flops(widths, rows, layers, hidden, inner)
    head = 6 * 2 * hidden * sum(w * r for w, r in zip(widths, rows, strict=True))  # the QA head, left out
    assert counted == pytest.approx(expected + head, rel=1e-9)
