"""What ``qatune.load`` returns for a classification run: labels and class probabilities for new rows, and
evaluation on labelled ones, over any runner (PyTorch or an ONNX export): the same pre- and post-processing."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from qatune.tasks.base import EvalResult


class ClassifyPredictor:
    def __init__(self, task: Any, runner: Any, tokenizer: Any, run_config: dict[str, Any]) -> None:
        self.task, self.runner, self.tokenizer, self.run_config = task, runner, tokenizer, run_config

    def _logits(self, examples: Sequence[Any], batch_size: int, progress: bool = False) -> np.ndarray:
        features = self.task.features(list(examples), self.tokenizer, None, int(self.run_config["max_seq_length"]),
                                      training=False)
        (logits,) = self.runner(features, batch_size, progress=progress)
        return np.stack(logits).astype(np.float32)

    def predict_batch(self, items: Sequence[Any], batch_size: int = 32, progress: bool = False
                      ) -> list[dict[str, Any]]:
        """``{"label": name, "probabilities": {name: p}}`` per item (a request object, text or parsed example)."""
        from qatune.tasks.classification.metrics import softmax

        if not items:
            return []
        examples = [self.task.parse_request(item, f"item {i}") for i, item in enumerate(items)]
        probs = softmax(self._logits(examples, batch_size, progress).astype(np.float64))
        return [self.task._response(p) for p in probs]

    def predict(self, text: str, features: Any = None) -> dict[str, Any]:
        return self.predict_batch([{"text": text, "features": features}])[0]

    def evaluate(self, examples: Sequence[Any], batch_size: int = 64, progress: bool = False,
                 **options: Any) -> EvalResult:
        options.pop("report", None)
        self.task.check_options(options)
        return self.task.result(list(examples), self._logits(examples, batch_size, progress))

    @property
    def info(self) -> dict[str, Any]:
        state = self.task.state or {}
        return {"task": self.task.name, "labels": state.get("labels"), "fusion": self.task.options.fusion,
                "method": self.run_config.get("method"), "model": self.run_config.get("model")}
