"""Text classification with optional tabular columns, as a qatune task (``task: classification``, alias
``classify``, options in the ``classify:`` section).

The task is *bound* to a run's settings (:meth:`ClassificationTask.bind`): which columns to read, the
transform fitted on the train split (label names, standardisation statistics, category vocabularies, the
derived-column recipe: JSON-able, kept in ``qatune.yaml`` as ``classify_state``) and, for a trained run, the
folder holding its head weights (``classifier_head.safetensors``). The registry's unbound instance
answers what needs no settings (names, report columns, options type).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qatune import runtime
from qatune.errors import ConfigError, DataError, ModelError
from qatune.tasks.base import (
    EvalResult,
    ExportSignature,
    ExtraInput,
    ModelSpec,
    OneWindowPerExample,
    ReportColumn,
    ReportSpec,
)
from qatune.tasks.classification.data import (
    ClassifyExample,
    ClassifyReport,
    check_eval_labels,
    fit_state,
    negative_name,
    read_examples,
    recipe_of,
    tabular_arrays,
    to_example,
)
from qatune.tasks.classification.options import ClassifyOptions, resolve_options

STATE_KEY = "classify_state"  # the fitted transform in a run's qatune.yaml
TEXT_CHARS_PER_TOKEN = 12  # texts are cut to max_seq_length * this many characters before tokenizing


def _pct(v: Any) -> str:
    return "" if v is None else f"{v:.1f}"


def _f3(v: Any) -> str:
    return "" if v is None else f"{v:.3f}"


@dataclass
class ClassifyFeatures(OneWindowPerExample):
    """Tokenized text per example plus its raw tabular values and label name (transformed per batch)."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    raw_numeric: np.ndarray  # [n, numeric columns], NaN = missing
    raw_categorical: list[list[str | None]]
    labels: list[str | None]
    # the model's tabular inputs (standardised values + missing flags, category ids) once the transform is
    # known (a trained run); the exporter and the ONNX runner read them by these names (ExtraInput)
    numeric: np.ndarray | None = None
    categorical: np.ndarray | None = None


@dataclass
class PreparedOptions:
    """The options plus the transform fitted on the train split (what :meth:`record` keeps)."""

    options: ClassifyOptions
    state: dict[str, Any]


def tabular_text(example: ClassifyExample, options: ClassifyOptions) -> str:
    """The tabular columns written out as text (fusion ``text``): ``name: value`` pairs."""
    parts = [f"{name}: {'none' if math.isnan(v) else f'{v:g}'}"
             for name, v in zip(options.numeric_columns, example.numeric, strict=True)]
    parts += [f"{name}: {v if v is not None else 'none'}"
              for name, v in zip(options.categorical_columns, example.categorical, strict=True)]
    return "; ".join(parts)


def _columns_crowd_out_text(examples: Sequence[ClassifyExample], tokenizer: Any, options: ClassifyOptions,
                            max_seq_length: int) -> str | None:
    """Fusion ``text`` writes the columns before the text, in the same token budget: with long column names
    and a short ``max_seq_length`` they leave the model little of the text (measured on Stack Overflow: 52 of
    64 tokens, and 3-4 points of accuracy lost). Returns the note that says so, None when they fit."""
    sample = [tabular_text(e, options) for e in examples[:256]]
    if not sample:
        return None
    used = sorted(len(ids) for ids in tokenizer(sample, add_special_tokens=True)["input_ids"])
    median = used[len(used) // 2]
    if median <= max_seq_length // 2:
        return None
    return (f"fusion text: the tabular columns written as text take {median} of the {max_seq_length} tokens "
            f"(median of {len(sample)} rows), leaving {max(max_seq_length - median, 0)} for the text; raise "
            "max_seq_length or use fusion concat")


class ClassificationTask:
    name = "classification"
    section = "classify"
    options_type = ClassifyOptions
    # the encoder only: the head (pooled text + tabular columns) is the task's own module
    model = ModelSpec(head="feature_extraction", needs_offsets=False)
    export_signature = ExportSignature(outputs=("logits",))
    run_files = ("predictions.json", "confusion_matrix.png", "classifier_head.safetensors")
    eval_only_options = frozenset({"validation_split", "test_split"})
    report = ReportSpec(
        columns=(ReportColumn("accuracy", "accuracy (%)", _pct), ReportColumn("macro_f1", "macro-F1 (%)", _pct),
                 ReportColumn("log_loss", "log loss", _f3)),
        primary="accuracy",
        optional=(ReportColumn("roc_auc", "ROC-AUC", _f3),),
        metric_note="accuracy and macro-F1 (%), log loss (nats) on the evaluation set after the last epoch",
        optional_note="ROC-AUC of the positive class (binary targets)",
        loss_note="Losses: cross-entropy of the class (class-weighted when class_weights is set); val loss on "
                  "the evaluation set.",
    )
    data_kind = "labelled_text"  # texts (+ columns) with a label: CSV/JSONL/Parquet records
    sample_data = None
    request_fields = {"text": "the text to classify (non-empty string; several text columns: joined, or give "
                              "each by its column name)",
                      "features": "tabular columns: a JSON object or NAME=VALUE,NAME=VALUE (missing numbers are "
                                  "imputed, unknown categories share one bucket)"}

    route = "classify"

    def __init__(self, options: ClassifyOptions | None = None, state: dict[str, Any] | None = None,
                 run_dir: Path | None = None, trained: bool = False) -> None:
        self._options = options
        self.state = state
        self.run_dir = run_dir
        self.trained = trained
        self._crowding_noted = False  # fusion text: the columns-crowd-out-text note was printed
        if options is not None and self.active_tabular:
            extra = [ExtraInput("numeric", "float32", (2 * len(options.numeric_columns),))] * bool(
                options.numeric_columns)
            extra += [ExtraInput("categorical", "int64", (len(options.categorical_columns),))] * bool(
                options.categorical_columns)
            self.export_signature = ExportSignature(outputs=("logits",), extra_inputs=tuple(extra))

    # -- binding to a run's settings --------------------------------------------------------------------
    def bind(self, run_config: dict[str, Any], run_dir: str | Path | None = None) -> ClassificationTask:
        """This task with a run's (or a config's) ``classify:`` section and fitted state; ``run_dir`` is where
        a trained run's head weights are."""
        section = run_config.get(self.section)
        options = resolve_options(dict(section) if isinstance(section, dict) else {})
        return ClassificationTask(options, run_config.get(STATE_KEY), Path(run_dir) if run_dir else None,
                                  trained="method_name" in run_config)

    @property
    def options(self) -> ClassifyOptions:
        if self._options is None:
            raise ConfigError("the classification task needs its settings here (bind it to a config or run)")
        return self._options

    def _state(self) -> dict[str, Any]:
        if self.state is None:
            raise ConfigError("the classification task has no fitted transform yet (train first)")
        return self.state

    @property
    def active_tabular(self) -> bool:
        """Tabular columns as model inputs (fusion concat with some columns)."""
        o = self.options
        return o.fusion == "concat" and bool(o.numeric_columns or o.categorical_columns)

    # -- options and data ------------------------------------------------------------------------------
    def resolve_options(self, options: dict[str, Any], context: dict[str, Any], source: str) -> ClassifyOptions:
        resolved = resolve_options(options)
        if resolved.recipe:
            from qatune.data.tabular import load_recipe

            load_recipe(resolved.recipe)  # a broken recipe fails with the config, before anything loads
        return resolved

    def read(self, source: str, max_samples: int | None, split: str | None = None
             ) -> tuple[list[ClassifyExample], ClassifyReport]:
        options = self.options
        examples, report = read_examples(str(source), options, recipe_of(options, self.state), max_samples, split,
                                         binary_negative=negative_name(options))
        if self.state is not None:
            check_eval_labels(self.state, report, options.label_column)
        elif split in (None, "train"):
            report.fit = fit_state(options, recipe_of(options, None), examples, report)  # type: ignore[attr-defined]
        return examples, report

    def write_examples(self, examples: Sequence[ClassifyExample], report: Any, path: Any) -> None:
        raise ConfigError("the classification task cannot be cut into pipeline steps yet; run `qatune train`")

    def data_info(self, report: ClassifyReport) -> dict[str, Any]:
        return {"rows": report.count, "labels": dict(report.labels)}

    def prepare(self, options: ClassifyOptions, train_report: Any, eval_report: Any) -> PreparedOptions:
        """The transform fitted on the train split; evaluation labels the training data lacks are an error
        here, before training starts."""
        state = getattr(train_report, "fit", None)
        if state is None:
            raise ConfigError("internal: the classification task's training data was read without fitting")
        if eval_report is not None:
            check_eval_labels(state, eval_report, options.label_column)
        return PreparedOptions(options, state)

    def record(self, options: Any) -> dict[str, Any]:
        return {STATE_KEY: options.state} if isinstance(options, PreparedOptions) else {}

    def score_files(self, data: str, predictions: str, **options: Any) -> dict[str, Any]:
        """Accuracy/macro-F1 of a predictions file (id -> label or {"label": ...}) against labelled data."""
        from qatune.data.jsonio import read_json_file

        found = read_json_file(Path(predictions), predictions)
        if not isinstance(found, dict):
            raise DataError(f"{predictions}: expected a JSON object of id -> label")
        examples, _ = self.read(data, None, split=options.get("split"))
        labels = self._state()["labels"]
        index = {name: i for i, name in enumerate(labels)}
        gold, predicted = [], []
        for e in examples:
            if e.id not in found:
                raise DataError(f"{predictions}: no prediction for id {e.id!r}")
            value = found[e.id]
            name = value.get("label") if isinstance(value, dict) else value
            if name not in index:
                raise DataError(f"{predictions}: id {e.id!r}: {name!r} is not a label ({', '.join(labels)})")
            gold.append(index[e.label])
            predicted.append(index[name])
        onehot = np.eye(len(labels))[predicted] * 20.0  # hard predictions: log loss is not meaningful
        from qatune.tasks.classification.metrics import classification_metrics

        metrics = classification_metrics(onehot, np.array(gold), labels)
        return {k: metrics[k] for k in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "eval_examples")}

    # -- training ----------------------------------------------------------------------------------------
    def features(self, examples: Sequence[ClassifyExample], tokenizer: Any, options: Any, max_seq_length: int,
                 training: bool = True, cache_dir: str | None = None, progress: bool = False,
                 use_cache: bool = True) -> ClassifyFeatures:
        opts = self.options
        limit = max_seq_length * TEXT_CHARS_PER_TOKEN
        if opts.fusion == "text" and (opts.numeric_columns or opts.categorical_columns):
            texts = [f"{tabular_text(e, opts)}{opts.text_separator}{e.text}"[:limit] for e in examples]
            if training and not self._crowding_noted:  # training reads two splits: one note, from one process
                note = _columns_crowd_out_text(examples, tokenizer, opts, max_seq_length)
                if note and runtime.is_main_process():
                    print(f"qatune: note: {note}", file=sys.stderr, flush=True)
                self._crowding_noted = note is not None
        else:
            texts = [e.text[:limit] for e in examples]
        enc = tokenizer(texts, truncation=True, max_length=max_seq_length)
        types = [np.asarray(t, np.int64) for t in enc["token_type_ids"]] if "token_type_ids" in enc else None
        numeric = np.array([e.numeric for e in examples], dtype=np.float64).reshape(len(examples), -1)
        features = ClassifyFeatures([np.asarray(x, np.int64) for x in enc["input_ids"]], types, numeric,
                                    [list(e.categorical) for e in examples], [e.label for e in examples])
        if self.state is not None and self.active_tabular:  # a trained run: the model's inputs now
            features.numeric, features.categorical = tabular_arrays(numeric, features.raw_categorical, self.state,
                                                                    opts)
        return features

    def wrap(self, model: Any) -> Any:
        """The encoder + the task's head; a trained run's head weights load from its folder."""
        from qatune.tasks.classification.modeling import HEAD_FILE, TextTabularClassifier

        state, opts = self._state(), self.options
        concat = self.active_tabular
        module = TextTabularClassifier(model, len(state["labels"]), len(state["numeric_columns"]) if concat else 0,
                                       [len(v) for v in state["vocab"]] if concat else [], opts.pooling,
                                       opts.head_dropout)
        if self.trained:
            run_dir = self.run_dir or getattr(model, "qatune_run_dir", None)  # set by the inference loader
            if run_dir is None:
                raise ModelError("a trained classification run's head weights live in its run dir; this code path "
                                 "did not pass the run dir to the task (load it with qatune.load(RUN))")
            path = Path(run_dir) / HEAD_FILE
            if not path.is_file():
                raise ModelError(f"run directory {run_dir} is incomplete: {HEAD_FILE} is missing (deleted or "
                                 "not copied); restore it, or retrain")
            from safetensors.torch import load_file

            module.load_head(load_file(str(path)), str(path))
        return module

    def save_state(self, module: Any, out: Path) -> list[str]:
        """The head weights beside the backend's files (safetensors: tensors only, no pickle)."""
        from safetensors.torch import save_file

        from qatune.tasks.classification.modeling import HEAD_FILE

        tmp = Path(out) / f".{HEAD_FILE}.tmp"
        save_file(module.head_state(), str(tmp))
        tmp.replace(Path(out) / HEAD_FILE)
        return [HEAD_FILE]

    def train_batches(self, features: ClassifyFeatures, batch_size: int, seed: int, group: bool) -> list[list[int]]:
        from qatune.core.batching import length_grouped_batches

        return length_grouped_batches(features.lengths, batch_size, seed, group)

    def feeds(self, features: ClassifyFeatures, indices: Sequence[int], pad_token_id: int,
              input_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Padded token arrays plus, with concat fusion, ``numeric`` and ``categorical`` (PyTorch and ONNX)."""
        from qatune.core.batching import pad_windows

        text_names = [n for n in input_names if n not in ("numeric", "categorical")] if input_names else None
        arrays = pad_windows(features, indices, pad_token_id, input_names=text_names)
        if self.active_tabular:
            idx = list(indices)
            if features.numeric is not None and features.categorical is not None:
                num, cat = features.numeric[idx], features.categorical[idx]
            else:  # training: the transform was fitted after the features were made
                num, cat = tabular_arrays(features.raw_numeric[idx], [features.raw_categorical[i] for i in idx],
                                          self._state(), self.options)
            if self.options.numeric_columns:
                arrays["numeric"] = num
            if self.options.categorical_columns:
                arrays["categorical"] = cat
        return arrays

    def label_ids(self, features: ClassifyFeatures, indices: Sequence[int]) -> np.ndarray:
        index = {name: i for i, name in enumerate(self._state()["labels"])}
        out = []
        for i in indices:
            label = features.labels[i]
            if label not in index:
                raise DataError(f"label {label!r} is not one the model was trained on ({', '.join(index)})")
            out.append(index[label])
        return np.array(out, dtype=np.int64)

    def collate(self, features: ClassifyFeatures, indices: Sequence[int], tokenizer: Any) -> dict[str, Any]:
        import torch

        batch = {k: torch.from_numpy(v) for k, v in self.feeds(features, indices, tokenizer.pad_token_id).items()}
        batch["labels"] = torch.from_numpy(self.label_ids(features, indices))
        return batch

    def loss(self, module: Any, batch: dict[str, Any]) -> Any:
        import torch

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        weights = self._state().get("class_weights")
        weight = torch.tensor(weights, dtype=torch.float32, device=batch["labels"].device) if weights else None
        return torch.nn.functional.cross_entropy(module(**inputs), batch["labels"], weight=weight)

    def evaluate(self, module: Any, tokenizer: Any, examples: Sequence[ClassifyExample], features: ClassifyFeatures,
                 options: Any, *, batch_size: int, device: Any, precision: str, progress: bool = False) -> EvalResult:
        t0 = time.perf_counter()
        outputs = self.run_windows(module, features, tokenizer.pad_token_id, batch_size, device, precision, progress)
        result = self.result(list(examples), np.stack(outputs[0]))
        result.metrics["eval_time_s"] = round(time.perf_counter() - t0, 3)
        return result

    def result(self, examples: list[ClassifyExample], logits: np.ndarray) -> EvalResult:
        from qatune.tasks.classification.metrics import classification_metrics, confusion_png, softmax

        state = self._state()
        labels = state["labels"]
        index = {name: i for i, name in enumerate(labels)}
        unknown = next((e for e in examples if e.label not in index), None)
        if unknown is not None:
            raise DataError(f"example {unknown.id}: label {unknown.label!r} is not one the model was trained on "
                            f"({', '.join(labels)})")
        gold = np.array([index[e.label] for e in examples], dtype=np.int64)
        metrics = classification_metrics(logits, gold, labels, state.get("class_weights"))
        probs = softmax(logits.astype(np.float64))
        predictions = {e.id: self._response(p) for e, p in zip(examples, probs, strict=True)}
        return EvalResult(metrics, files={"predictions.json": predictions, "confusion_matrix.png": confusion_png(metrics)})

    def _response(self, probs: np.ndarray) -> dict[str, Any]:
        labels = self._state()["labels"]
        return {"label": labels[int(probs.argmax())],
                "probabilities": {name: round(float(p), 6) for name, p in zip(labels, probs, strict=True)}}

    # -- inference -----------------------------------------------------------------------------------------
    def run_windows(self, module: Any, features: ClassifyFeatures, pad_token_id: int, batch_size: int, device: Any,
                    precision: str, progress: bool = False) -> tuple[list[np.ndarray]]:
        import torch

        from qatune.core.batching import inference_batches

        was_training = module.training
        module.eval()
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(features)
        try:
            with torch.inference_mode():
                for indices in inference_batches(features.lengths, batch_size, device.type == "cpu"):
                    feeds = {k: torch.from_numpy(v).to(device) for k, v in self.feeds(features, indices,
                                                                                      pad_token_id).items()}
                    with runtime.autocast(device, precision):
                        logits = module(**feeds).float().cpu().numpy()
                    for row, i in enumerate(indices):
                        out[i] = logits[row]
        finally:
            module.train(was_training)
        return (out,)

    def score_outputs(self, examples: Sequence[ClassifyExample], features: ClassifyFeatures, outputs: Any,
                      run_config: dict[str, Any], report: Any = None) -> EvalResult:
        return self.bind(run_config).result(list(examples), np.stack(outputs[0]))

    def best_predictions(self, examples: Sequence[ClassifyExample], features: ClassifyFeatures, outputs: Any,
                         run_config: dict[str, Any]) -> list[str]:
        labels = self.bind(run_config)._state()["labels"]
        return [labels[int(i)] for i in np.stack(outputs[0]).argmax(1)]

    def predictor(self, runner: Any, tokenizer: Any, run_config: dict[str, Any], **options: Any) -> Any:
        from qatune.tasks.classification.predictor import ClassifyPredictor

        task = self if self.state is not None else self.bind(run_config, self.run_dir)
        return ClassifyPredictor(task, runner, tokenizer, run_config)

    def check_options(self, options: dict[str, Any]) -> None:
        if options:
            raise ConfigError(f"unknown option(s) {', '.join(sorted(options))} for the classification task's "
                              "predictor (it takes none)")

    # -- requests -------------------------------------------------------------------------------------------
    def parse_request(self, payload: Any, where: str) -> ClassifyExample:
        """``{"text": ..., "features": {...} or "A=1,B=x"}`` (or the text columns by name, or a bare string)
        -> an unlabelled example, the run's recipe applied; errors name ``where`` and the field."""
        opts = self.options
        if isinstance(payload, ClassifyExample):
            return payload
        if isinstance(payload, str):
            payload = {"text": payload}
        if not isinstance(payload, dict):
            raise DataError(f"{where}: expected an object with 'text' (and 'features'), got {type(payload).__name__}")
        recipe = recipe_of(opts, self.state)
        columns = {*opts.text_columns, *opts.numeric_columns, *opts.categorical_columns, *recipe.inputs}
        unknown = sorted(set(payload) - {"text", "features", "id"} - columns)
        if unknown:
            raise DataError(f"{where}: unknown field(s) {', '.join(unknown)}; a request has text, features (and id)")
        features = parse_features(payload.get("features"), where)
        bad = sorted(set(features) - columns)
        if bad:
            raise DataError(f"{where}: 'features': unknown column(s) {', '.join(bad)}; known: "
                            f"{', '.join(sorted(columns - set(opts.text_columns))) or 'none (a text-only model)'}")
        record: dict[str, Any] = {**{k: v for k, v in payload.items() if k in columns}, **features}
        text = payload.get("text")
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: 'text' must be a non-empty string")
            record = {k: v for k, v in record.items() if k not in opts.text_columns}
            record[opts.text_columns[0]] = text
        if not any(isinstance(record.get(c), str) and record[c].strip() for c in opts.text_columns):
            raise DataError(f"{where}: 'text' must be a non-empty string")
        for name in opts.numeric_columns:  # a number given as a JSON number or a string: both fine
            if isinstance(record.get(name), bool):
                raise DataError(f"{where}: column '{name}': {record[name]!r} is not a number")
        ident = payload.get("id")
        return to_example(record, opts, recipe, where, str(ident) if ident is not None else where, None,
                          labelled=False)

    def to_request(self, example: ClassifyExample) -> dict[str, Any]:
        opts = self.options
        features: dict[str, Any] = {n: (None if math.isnan(v) else v)
                                    for n, v in zip(opts.numeric_columns, example.numeric, strict=True)}
        features.update(zip(opts.categorical_columns, example.categorical, strict=True))
        return {"text": example.text, "features": {k: v for k, v in features.items() if v is not None}}

    def format_response(self, prediction: Any) -> Any:
        return prediction


def parse_features(value: Any, where: str) -> dict[str, Any]:
    """``features`` as a JSON object, a JSON string of one, or ``NAME=VALUE,NAME=VALUE`` (the CLI form)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if not isinstance(value, str):
        raise DataError(f"{where}: 'features' must be an object or NAME=VALUE,NAME=VALUE, got {type(value).__name__}")
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: 'features' is not valid JSON ({exc.msg})") from None
        return parse_features(data, where)
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, val = part.partition("=")
        if not sep or not name.strip():
            raise DataError(f"{where}: 'features': {part!r} is not NAME=VALUE (separate pairs with commas; for "
                            "values holding commas pass a JSON object)")
        if name.strip() in out:
            raise DataError(f"{where}: 'features': column '{name.strip()}' given twice")
        out[name.strip()] = val.strip()
    return out


__all__ = ["ClassificationTask", "ClassifyFeatures", "PreparedOptions", "parse_features"]
