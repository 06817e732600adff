"""ONNX export of a task with a per-window output and an extra model input, defined outside qatune.

The digit classifier of tests/test_custom_task.py, given a tabular input ``numeric`` (two floats per text)
that its forward pass adds to the logits: the export traces it as a third graph input (float), the logits
``[batch, 2]`` come back as one row per window (not cut to the window length like QA's per-token logits), and
the export answers exactly like the PyTorch run through the same predictor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from test_custom_task import DigitTask, Windows, texts

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import qatune  # noqa: E402
from qatune.core.batching import pad_windows, sorted_batches  # noqa: E402
from qatune.tasks import ExportSignature, ExtraInput, register_task, unregister_task  # noqa: E402

NUMERIC = ("input_ids", "attention_mask", "token_type_ids", "numeric")


def numeric_rows(examples: Sequence[dict]) -> list[np.ndarray]:
    """Per text: its length in words / 10 and whether it holds a digit (a feature the model can use)."""
    return [np.array([len(e["text"].split()) / 10, float(any(c.isdigit() for c in e["text"]))], np.float32)
            for e in examples]


class Tabular:
    """Logits plus a fixed linear map of the tabular input (an nn.Module at runtime)."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class _Tabular(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model
                self.register_buffer("mix", torch.tensor([[0.5, -0.5], [-2.0, 2.0]]))

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None,
                        numeric: Any = None) -> Any:
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids).logits.float()
                return logits if numeric is None else logits + numeric.float() @ self.mix

        return _Tabular()


class TabularDigits(DigitTask):
    export_signature = ExportSignature(outputs=("logits",), output_axes={"logits": ("batch", None)},
                                       extra_inputs=(ExtraInput("numeric", "float32", (2,)),))

    def features(self, examples: Sequence[dict], tokenizer: Any, options: Any, max_seq_length: int, training: bool,
                 cache_dir: str | None = None, progress: bool = False, use_cache: bool = True) -> Windows:
        windows = super().features(examples, tokenizer, options, max_seq_length, training)
        windows.numeric = numeric_rows(examples)  # type: ignore[attr-defined]
        return windows

    def wrap(self, model: Any) -> Any:
        return Tabular(model)

    def run_windows(self, module: Any, features: Windows, pad_token_id: int, batch_size: int, device: Any,
                    precision: str, progress: bool = False) -> tuple[list[np.ndarray]]:
        import torch

        module.eval()
        out: list[np.ndarray] = [np.zeros(2, np.float32)] * len(features)
        with torch.inference_mode():
            for indices in sorted_batches(features.lengths, batch_size):
                feeds = pad_windows(features, indices, pad_token_id, input_names=NUMERIC)
                logits = module(**{k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()}).numpy()
                for row, i in enumerate(indices):
                    out[i] = logits[row]
        return (out,)


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch

    register_task("has_digit", TabularDigits)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("export-task")
        train, dev = folder / "train.jsonl", folder / "dev.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in texts(24, seed=1)))
        dev.write_text("".join(json.dumps(r) + "\n" for r in texts(10, seed=2)))
        qatune.train({"task": "has_digit", "model": str(tiny_model_dir), "method": "full", "train": str(train),
                      "eval": str(dev), "output": str(folder / "run"), "epochs": 1, "batch_size": 8,
                      "max_seq_length": 32, "tracking": False, "do_eval": False}, progress=False)
        yield folder
    finally:
        torch.set_num_threads(threads)
        unregister_task("has_digit")


def test_export_with_an_extra_input_and_a_per_window_output(run: Path) -> None:
    import onnx

    from qatune.export.onnx import export_onnx
    from qatune.inference.onnx_runner import OnnxRunner

    info = export_onnx(run / "run", run / "onnx", parity_samples=6, log=None)
    assert info["parity"]["fp32"]["passed"] and info["parity"]["fp32"]["max_abs_logit_diff"] < 1e-3
    assert info["extra_inputs"] == ["numeric"]
    assert info["dynamic_axes"]["logits"] == {"0": "batch"} or info["dynamic_axes"]["logits"] == {0: "batch"}
    graph = onnx.load(str(run / "onnx" / "model.onnx")).graph
    inputs = {i.name: i for i in graph.input}
    assert "numeric" in inputs and inputs["numeric"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 2]  # per window: the label axis is fixed, not the sequence

    items = [{"text": r["text"]} for r in texts(10, seed=2)]
    exported = qatune.load(str(run / "onnx"))
    assert isinstance(exported.runner, OnnxRunner) and exported.runner.per_token == [False]
    ours = exported.predict_batch(items, batch_size=3)
    theirs = qatune.load(str(run / "run"), device="cpu").predict_batch(items, batch_size=4)
    assert [p["label"] for p in ours] == [p["label"] for p in theirs]
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(ours, theirs, strict=True)) < 1e-4
    # the tabular input reaches the graph: other numbers, other logits
    features = exported.task.features([{**item, "label": 0} for item in items[:2]], exported.tokenizer, None, 32,
                                      False)
    (base,) = exported.runner(features, batch_size=2)
    features.numeric = [row + np.array([0.0, 3.0], np.float32) for row in features.numeric]
    (shifted,) = exported.runner(features, batch_size=2)
    assert all(np.allclose(b - a, [-6.0, 6.0], atol=1e-4) for a, b in zip(base, shifted, strict=True))
