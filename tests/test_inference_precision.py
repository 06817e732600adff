"""bf16 inference: weights stored in bf16 once (no per-call casts), logits close to fp32, float32 out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import qatune
from qatune.data.squad.squad_schema import load_qa_examples
from qatune.inference.loader import TorchRunner
from qatune.tasks.extractive_qa.features import build_features

SAMPLE = Path(qatune.__file__).resolve().parent / "resources" / "sample"


def _dtypes(runner: TorchRunner) -> set[torch.dtype]:
    return {p.dtype for p in runner.span_model.parameters()}


@pytest.fixture(scope="module")
def features_and_model(tiny_model_dir: Path) -> tuple:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, _ = load_qa_examples(str(SAMPLE / "dev.json"), max_samples=12)
    features = build_features(examples, tokenizer, 128, 32, training=False, use_cache=False, progress=False)
    return features, tokenizer, lambda: AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir)


def test_bf16_runner_stores_bf16_weights_and_returns_float32_logits(features_and_model: tuple) -> None:
    features, tokenizer, make_model = features_and_model
    fp32 = TorchRunner(make_model(), tokenizer, device="cpu", precision="fp32")
    bf16 = TorchRunner(make_model(), tokenizer, device="cpu", precision="bf16", bf16_weights=True)
    shared = make_model()
    mixed = TorchRunner(shared, tokenizer, device="cpu", precision="bf16")
    assert _dtypes(fp32) == {torch.float32}
    assert _dtypes(bf16) == {torch.bfloat16}
    assert _dtypes(mixed) == {torch.float32}  # default: autocast only, the caller's model is not converted
    assert {p.dtype for p in shared.parameters()} == {torch.float32}  # e.g. `qatune bench` exports it next

    ref_start, ref_end = fp32(features, batch_size=4)
    for runner in (bf16, mixed):
        start, end = runner(features, batch_size=4)
        assert len(start) == len(features)
        for a, b, n in zip(start, ref_start, features.lengths, strict=True):
            assert a.dtype == np.float32 and a.shape == (n,)
            # bf16 keeps ~3 significant digits: close to fp32, not equal
            np.testing.assert_allclose(a, b, atol=0.05, rtol=0.05)
        assert not all(np.array_equal(a, b) for a, b in zip(start, ref_start, strict=True))
        np.testing.assert_allclose(np.concatenate(end), np.concatenate(ref_end), atol=0.05, rtol=0.05)


def test_batch_size_does_not_change_fp32_logits(features_and_model: tuple) -> None:
    """One autocast region now spans all batches; batching must still not leak between windows."""
    features, tokenizer, make_model = features_and_model
    runner = TorchRunner(make_model(), tokenizer, device="cpu", precision="fp32")
    one = runner(features, batch_size=1)[0]
    many = runner(features, batch_size=8)[0]
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_load_converts_its_own_model_to_bf16(tiny_lora_run: Path) -> None:
    """qatune.load owns its model, so bf16 inference stores bf16 weights; fp32 stays fp32."""
    assert _dtypes(qatune.load(str(tiny_lora_run), device="cpu", precision="bf16").runner) == {torch.bfloat16}
    assert _dtypes(qatune.load(str(tiny_lora_run), device="cpu", precision="fp32").runner) == {torch.float32}
