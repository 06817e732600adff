"""A task defined here, outside qatune, goes through the public API: registered, trained, evaluated, saved,
reloaded and used for predictions, with qatune's loop, backend, loader and registry unchanged.

The task: does a short text contain a digit? Two classes, a tiny random BERT with a fresh
sequence-classification head (the hf backend builds it from the task's ModelSpec), JSON Lines data read by
qatune's format readers with this task's own schema.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

import qatune
from qatune.core.batching import length_grouped_batches, pad_windows, sorted_batches
from qatune.data.readers import RecordSchema, check_max_samples, open_records
from qatune.errors import ConfigError, DataError
from qatune.tasks import (
    EvalResult,
    ExportSignature,
    ModelSpec,
    OneWindowPerExample,
    ReportColumn,
    ReportSpec,
    get_task,
    register_task,
    unregister_task,
)

WORDS = "the a cat dog sat ran on under blue green house tree river stone quick slow".split()
SCHEMA = RecordSchema(required=("text", "label"), fields="id, text and label",
                      columns_hint="Tables need text and label columns.", local_sources="a .jsonl file")


@dataclass
class DigitOptions:
    label_smoothing: float = 0.0


@dataclass
class Report:
    source: str
    count: int

    def summary(self) -> str:
        return f"{self.count} texts from {self.source}"


@dataclass
class Windows(OneWindowPerExample):
    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    labels: np.ndarray


class Logits:
    """The task's forward pass: the backend's classifier, float32 logits out (an nn.Module subclass at runtime)."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class _Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
                return self.model(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).logits.float()

        return _Logits()


class DigitPredictor:
    def __init__(self, task: DigitTask, runner: Any, tokenizer: Any, run_config: dict[str, Any]) -> None:
        self.task, self.runner, self.tokenizer, self.run_config = task, runner, tokenizer, run_config

    def _logits(self, examples: list[dict[str, Any]], batch_size: int) -> np.ndarray:
        features = self.task.features(examples, self.tokenizer, None, int(self.run_config["max_seq_length"]), False)
        (logits,) = self.runner(features, batch_size)
        return np.stack(logits)

    def predict_batch(self, items: Sequence[Any], batch_size: int = 32, progress: bool = False) -> list[dict]:
        examples = [{"id": str(i), "text": self.task.parse_request(item, f"item {i}"), "label": 0}
                    for i, item in enumerate(items)]
        logits = self._logits(examples, batch_size)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        return [{"label": int(p.argmax()), "probability": float(p.max())} for p in probs]

    def evaluate(self, examples: Sequence[Any], batch_size: int = 64, progress: bool = False, **options: Any
                 ) -> EvalResult:
        logits = self._logits(list(examples), batch_size)
        return self.task.result(list(examples), logits)

    @property
    def info(self) -> dict[str, Any]:
        return {"task": self.task.name}


class DigitTask:
    name = "has_digit"
    section = "digits"
    options_type = DigitOptions
    model = ModelSpec(head="sequence_classification", head_options={"num_labels": 2})
    export_signature = ExportSignature(outputs=("logits",))
    run_files = ("predictions.json",)
    report = ReportSpec(columns=(ReportColumn("accuracy", "accuracy (%)", lambda v: f"{v:.1f}"),), primary="accuracy",
                        metric_note="accuracy: share of texts classified right", loss_note="cross-entropy")
    request_fields = {"text": "the text"}
    route = "has-digit"  # served at POST /v1/has-digit
    zero_shot = False
    sample_data = None

    def resolve_options(self, options: dict[str, Any], context: dict[str, Any], source: str) -> DigitOptions:
        result = DigitOptions(**options)
        if not 0 <= result.label_smoothing < 1:
            raise ConfigError(f"digits.label_smoothing must be in [0, 1), got {result.label_smoothing}")
        return result

    def read(self, source: str, max_samples: int | None, split: str | None = None) -> tuple[list[dict], Report]:
        limit = check_max_samples(max_samples)
        records, _ = open_records(source, SCHEMA, split, limit)
        examples = []
        for n, (where, record, fallback) in enumerate(records):
            if limit is not None and n >= limit:
                break
            if record.get("label") not in (0, 1):
                raise DataError(f"{source}: {where}: field 'label' must be 0 or 1")
            examples.append({"id": str(record.get("id") or fallback), "text": str(record["text"]),
                             "label": int(record["label"])})
        return examples, Report(str(source), len(examples))

    def prepare(self, options: DigitOptions, train_report: Any, eval_report: Any) -> DigitOptions:
        return options

    def record(self, options: DigitOptions) -> dict[str, Any]:
        return {}

    def write_examples(self, examples: Sequence[dict], report: Any, path: Any) -> None:
        Path(path).write_text("".join(json.dumps(e) + "\n" for e in examples))

    def data_info(self, report: Report) -> dict[str, Any]:
        return {"texts": report.count}

    def features(self, examples: Sequence[dict], tokenizer: Any, options: Any, max_seq_length: int, training: bool,
                 cache_dir: str | None = None, progress: bool = False, use_cache: bool = True) -> Windows:
        enc = tokenizer([e["text"] for e in examples], truncation=True, max_length=max_seq_length)
        types = [np.asarray(t, np.int64) for t in enc["token_type_ids"]] if "token_type_ids" in enc else None
        return Windows([np.asarray(x, np.int64) for x in enc["input_ids"]], types,
                       np.array([e["label"] for e in examples], dtype=np.int64))

    def wrap(self, model: Any) -> Any:
        return Logits(model)

    def train_batches(self, features: Windows, batch_size: int, seed: int, group: bool) -> list[list[int]]:
        return length_grouped_batches(features.lengths, batch_size, seed, group)

    def collate(self, features: Windows, indices: Sequence[int], tokenizer: Any) -> dict[str, Any]:
        import torch

        batch = {k: torch.from_numpy(v) for k, v in pad_windows(features, indices, tokenizer.pad_token_id).items()}
        batch["labels"] = torch.from_numpy(features.labels[list(indices)])
        return batch

    def loss(self, module: Any, batch: dict[str, Any]) -> Any:
        import torch

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return torch.nn.functional.cross_entropy(module(**inputs), batch["labels"])

    def result(self, examples: list[dict], logits: np.ndarray, loss: float | None = None) -> EvalResult:
        predicted = logits.argmax(1)
        gold = np.array([e["label"] for e in examples])
        metrics: dict[str, Any] = {"accuracy": float(100 * (predicted == gold).mean()), "eval_examples": len(gold)}
        if loss is not None:
            metrics["eval_loss"] = loss
        predictions = {e["id"]: int(p) for e, p in zip(examples, predicted, strict=True)}
        return EvalResult(metrics, files={"predictions.json": predictions})

    def evaluate(self, module: Any, tokenizer: Any, examples: Sequence[dict], features: Windows, options: Any, *,
                 batch_size: int, device: Any, precision: str, progress: bool = False) -> EvalResult:
        import torch

        (logits,) = self.run_windows(module, features, tokenizer.pad_token_id, batch_size, device, precision)
        stacked = np.stack(logits)
        loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(stacked), torch.from_numpy(features.labels)))
        return self.result(list(examples), stacked, loss)

    def run_windows(self, module: Any, features: Windows, pad_token_id: int, batch_size: int, device: Any,
                    precision: str, progress: bool = False) -> tuple[list[np.ndarray]]:
        import torch

        was_training = module.training
        module.eval()
        out: list[np.ndarray] = [np.zeros(2, np.float32)] * len(features)
        with torch.inference_mode():
            for indices in sorted_batches(features.lengths, batch_size):
                feeds = pad_windows(features, indices, pad_token_id)
                logits = module(**{k: torch.from_numpy(v).to(device) for k, v in feeds.items()}).cpu().numpy()
                for row, i in enumerate(indices):
                    out[i] = logits[row]
        module.train(was_training)
        return (out,)

    def predictor(self, runner: Any, tokenizer: Any, run_config: dict[str, Any], **options: Any) -> DigitPredictor:
        return DigitPredictor(self, runner, tokenizer, run_config)

    def score_outputs(self, examples: Sequence[dict], features: Windows, outputs: Any, run_config: dict[str, Any],
                      report: Any = None) -> EvalResult:
        return self.result(list(examples), np.stack(outputs[0]))

    def best_predictions(self, examples: Sequence[dict], features: Windows, outputs: Any,
                         run_config: dict[str, Any]) -> list[int]:
        return np.stack(outputs[0]).argmax(1).tolist()

    def score_files(self, data: str, predictions_file: str, **options: Any) -> dict[str, Any]:
        predictions = json.loads(Path(predictions_file).read_text())
        examples, _ = self.read(data, None)
        return {"accuracy": 100 * float(np.mean([predictions.get(e["id"]) == e["label"] for e in examples]))}

    def check_options(self, options: dict[str, Any]) -> None:
        if options:
            raise ConfigError(f"unknown option(s) {sorted(options)} for the has_digit task")

    def parse_request(self, payload: Any, where: str) -> str:
        text = payload.get("text") if isinstance(payload, dict) else payload
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: 'text' must be a non-empty string")
        return text

    def format_response(self, prediction: Any) -> Any:
        return prediction

    def to_request(self, example: dict) -> dict[str, str]:
        return {"text": example["text"]}


def texts(n: int, seed: int) -> list[dict[str, Any]]:
    """Half of the texts carry a digit somewhere among ordinary words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
        label = i % 2
        if label:
            words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 9)))
        out.append({"id": f"t{seed}-{i}", "text": " ".join(words), "label": label})
    return out


@pytest.fixture
def digit_task():
    register_task("has_digit", DigitTask)
    yield get_task("has_digit")
    unregister_task("has_digit")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("digits")
    train, dev = folder / "train.jsonl", folder / "dev.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in texts(96, seed=1)))
    dev.write_text("".join(json.dumps(r) + "\n" for r in texts(40, seed=2)))
    return train, dev


def test_a_task_defined_outside_qatune_trains_evaluates_saves_reloads_and_predicts(
        digit_task: Any, data: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path, one_thread: None) -> None:
    train, dev = data
    out = tmp_path / "digits-run"
    result = qatune.train({"task": "has_digit", "model": str(tiny_model_dir), "method": "full", "train": str(train),
                           "eval": str(dev), "output": str(out), "epochs": 6, "batch_size": 8, "learning_rate": 3e-3,
                           "max_seq_length": 32, "tracking": False, "digits": {"label_smoothing": 0.0}},
                          progress=False)

    # trained: the loss fell and the task's own metric is in metrics.json, history and the run's files
    history = result.history
    assert len(history) == 6 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.metrics["accuracy"] >= 90.0, result.metrics
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["accuracy"] == result.metrics["accuracy"] and saved["eval_examples"] == 40
    run_predictions = json.loads((out / "predictions.json").read_text())
    assert len(run_predictions) == 40
    run_cfg = (out / "qatune.yaml").read_text()
    assert "task: has_digit" in run_cfg and "digits:" in run_cfg and "qa:" not in run_cfg
    assert (out / "model.safetensors").is_file()  # the hf backend saved a sequence-classification model

    # evaluated again from the saved run: same predictions, same accuracy
    eval_dir = tmp_path / "eval"
    metrics = qatune.evaluate(str(out), str(dev), output=str(eval_dir), progress=False)
    assert metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert json.loads((eval_dir / "predictions.json").read_text()) == run_predictions

    # reloaded and predicting through the task's predictor and request schema
    predictor = qatune.load(str(out))
    rows = [json.loads(line) for line in dev.read_text().splitlines()]
    answers = predictor.predict_batch([{"text": r["text"]} for r in rows], batch_size=7)
    assert [a["label"] for a in answers] == [run_predictions[r["id"]] for r in rows]
    assert all(0.5 <= a["probability"] <= 1.0 for a in answers)
    with pytest.raises(DataError, match="item 0: 'text' must be a non-empty string"):
        predictor.predict_batch([{"text": ""}])


def test_the_custom_task_has_its_own_config_section(digit_task: Any, tiny_model_dir: Path) -> None:
    from qatune.config import config_from_dict, config_to_dict

    cfg = config_from_dict({"task": "has_digit", "model": str(tiny_model_dir), "label_smoothing": 0.2})
    assert cfg.task_options == {"label_smoothing": 0.2}  # a flat key lands in the task's section
    assert config_to_dict(cfg)["digits"] == {"label_smoothing": 0.2} and "qa" not in config_to_dict(cfg)
    with pytest.raises(ConfigError, match=r"digits.label_smoothing must be in \[0, 1\)"):
        config_from_dict({"task": "has_digit", "digits": {"label_smoothing": 1.5}})
    with pytest.raises(ConfigError, match="unknown key 'doc_stride'"):  # QA's options are not this task's
        config_from_dict({"task": "has_digit", "doc_stride": 64})


def test_task_names_are_checked_like_method_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'nope'. Available: extractive_qa"):
        get_task("nope")
    with pytest.raises(ValueError, match="lower case"):
        register_task("Has Digit", DigitTask)
    with pytest.raises(ValueError, match="already registered"):
        register_task("extractive_qa", DigitTask)
    assert dataclasses.is_dataclass(get_task("qa").options_type)  # the alias names the same task


def test_one_window_per_example_gives_the_window_bookkeeping_from_the_fields() -> None:
    """The features mixin the custom task uses (qatune.tasks.OneWindowPerExample): lengths, the identity
    window -> example map, and subset taking the same rows of every per-example field."""
    ids = [np.arange(n, dtype=np.int64) for n in (3, 5, 2)]
    windows = Windows(ids, None, np.array([0, 1, 1]))
    assert len(windows) == 3 and windows.lengths.tolist() == [3, 5, 2]
    assert windows.example_index.tolist() == [0, 1, 2]
    part = windows.subset([2, 0])
    assert isinstance(part, Windows) and part.token_type_ids is None
    assert [x.tolist() for x in part.input_ids] == [[0, 1], [0, 1, 2]] and part.labels.tolist() == [1, 0]
    typed = Windows(ids, [np.zeros(n, np.int64) + n for n in (3, 5, 2)], np.array([0, 1, 1])).subset([1])
    assert [t.tolist() for t in typed.token_type_ids] == [[5] * 5] and len(typed.subset([])) == 0
