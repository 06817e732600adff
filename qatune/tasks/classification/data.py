"""Reading text + tabular rows for classification, the split rule, and the tabular transform fitted on the
train split (standardisation statistics, category vocabularies, label names) that a run keeps as JSON-able
data in its ``qatune.yaml``.

Repairs are counted and printed (an empty numeric or categorical cell: imputed and flagged / the unknown
bucket); everything else that is wrong stops with the file, row and column.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from qatune.data.readers import RecordSchema, check_max_samples, open_records
from qatune.data.tabular import Recipe, is_empty, parse_number, recipe_from_dict
from qatune.errors import ConfigError, DataError
from qatune.tasks.classification.options import ClassifyOptions, buckets

MAX_CATEGORIES = 1000  # per categorical column: the most frequent train values; the rest share "unknown"
MIN_CATEGORY_COUNT = 2  # a value seen once in train has no embedding worth learning: "unknown"


@dataclass
class ClassifyExample:
    id: str
    text: str
    numeric: list[float]  # raw values (NaN: missing), in numeric_columns order
    categorical: list[str | None]  # raw values (None: missing), in categorical_columns order
    label: str | None  # the class name; None for a request without a label


@dataclass
class ClassifyReport:
    source: str
    split: str | None
    count: int = 0
    labels: Counter = field(default_factory=Counter)
    first_row: dict[str, str] = field(default_factory=dict)  # label -> where it first occurs
    repairs: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        split = f" ({self.split} split)" if self.split else ""
        labels = ", ".join(f"{k} {v}" for k, v in self.labels.most_common())
        text = f"{self.count} rows from {self.source}{split}: {labels}"
        if self.repairs:
            text += "; repaired: " + ", ".join(f"{v} {k}" for k, v in sorted(self.repairs.items()))
        return text + "".join(f"; {n}" for n in self.notes)


def needed_columns(options: ClassifyOptions, recipe: Recipe, labelled: bool = True) -> list[str]:
    derived = set(recipe.derived)
    columns = [*options.text_columns, *(c for c in options.numeric_columns + options.categorical_columns
                                        if c not in derived), *recipe.inputs]
    if labelled:
        columns.append(options.label_column)
    if options.split_column:
        columns.append(options.split_column)
    return list(dict.fromkeys(columns))


def schema_for(options: ClassifyOptions, recipe: Recipe) -> RecordSchema:
    columns = needed_columns(options, recipe)
    return RecordSchema(required=tuple(columns), fields=", ".join(columns),
                        columns_hint="Name the right columns with --text-columns, --label-column, "
                                     "--numeric-columns, --categorical-columns (or the recipe's derived columns).",
                        local_sources="a .csv/.jsonl/.json/.parquet file (plain or .gz) or a save_to_disk folder")


def split_of(value: Any, options: ClassifyOptions, where: str) -> str | None:
    """The split a row belongs to by the split rule (None: in no split)."""
    column = options.split_column or ""
    if options.split_by == "value":
        name = "" if is_empty(value) else str(value).strip().lower()
        name = {"dev": "validation", "val": "validation", "valid": "validation"}.get(name, name)
        if name not in ("train", "validation", "test"):
            raise DataError(f"{where}: column '{column}': {str(value)[:40]!r} is not train, validation or test")
        return name
    if options.split_by == "hash":
        if is_empty(value):
            raise DataError(f"{where}: column '{column}' is empty; every row needs a value to be split by")
        bucket = int(hashlib.sha1(str(value).strip().encode()).hexdigest(), 16) % options.split_modulo
    else:
        number = parse_number(value, where, column)
        if math.isnan(number) or not number.is_integer():
            raise DataError(f"{where}: column '{column}': {value!r} is not a whole number (split_by mod)")
        bucket = int(number) % options.split_modulo
    for name in ("train", "validation", "test"):
        if bucket in buckets(f"{name}_split", getattr(options, f"{name}_split"), options.split_modulo):
            return name
    return None


def read_examples(source: str, options: ClassifyOptions, recipe: Recipe, max_samples: int | None,
                  split: str | None, binary_negative: str | None = None) -> tuple[list[ClassifyExample],
                                                                                  ClassifyReport]:
    """Rows of ``split`` (None: the train split, or the whole file without a split rule) as examples."""
    limit = check_max_samples(max_samples)
    want = split or "train"
    if want not in ("train", "validation", "test"):
        raise ConfigError(f"split {split!r}: the classify task has train, validation and test splits")
    report = ClassifyReport(str(source), want if options.split_column else None)
    records, notes = open_records(source, schema_for(options, recipe), split=None if options.split_column else split)
    report.notes.extend(notes)
    examples: list[ClassifyExample] = []
    checked_columns = False
    for where_in_file, record, fallback in records:
        where = f"{source}: {where_in_file}"
        if not checked_columns:  # JSON/parquet rows: the readers do not check columns for those formats
            missing = [c for c in needed_columns(options, recipe) if c not in record]
            if missing:
                raise DataError(f"{where}: missing column(s) {', '.join(missing)} (found: {', '.join(record)}). "
                                "Name the right columns with --text-columns, --label-column, --numeric-columns, "
                                "--categorical-columns")
            checked_columns = True
        if options.split_column and split_of(record.get(options.split_column), options, where) != want:
            continue
        examples.append(to_example(record, options, recipe, where, fallback or f"row-{len(examples) + 1}", report,
                                   labelled=True, binary_negative=binary_negative))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(f"{source}: no rows" + (f" in the {want} split" if options.split_column else "")
                        + "; check the file and the split rule (split_column, *_split)")
    return examples, report


def to_example(record: dict[str, Any], options: ClassifyOptions, recipe: Recipe, where: str, fallback: str,
               report: ClassifyReport | None, labelled: bool, binary_negative: str | None = None
               ) -> ClassifyExample:
    """One row -> an example; the recipe's derived columns first, then the checks, each naming ``where``."""
    record = recipe.apply(record, where)
    parts = [str(record.get(c)).strip() for c in options.text_columns if not is_empty(record.get(c))]
    if not parts:
        raise DataError(f"{where}: column(s) {', '.join(options.text_columns)}: the text is empty; fill it in or "
                        "remove the row")
    numeric = [parse_number(record.get(c), where, c) for c in options.numeric_columns]
    categorical = [None if is_empty(record.get(c)) else str(record.get(c)).strip() for c in options.categorical_columns]
    if report is not None:
        for name, value in zip(options.numeric_columns, numeric, strict=True):
            if math.isnan(value):
                report.repairs[f"empty '{name}' imputed (flagged)"] += 1
        for name, cat in zip(options.categorical_columns, categorical, strict=True):
            if cat is None:
                report.repairs[f"empty '{name}' -> unknown"] += 1
    label = None
    if labelled:
        raw = record.get(options.label_column)
        if is_empty(raw):
            raise DataError(f"{where}: column '{options.label_column}': the label is empty; every row needs one")
        label = str(raw).strip()
        if isinstance(raw, float) and raw.is_integer():
            label = str(int(raw))
        if options.positive_label is not None:
            label = options.positive_label if label == options.positive_label else (binary_negative or "other")
        if report is not None:
            report.count += 1
            report.labels[label] += 1
            report.first_row.setdefault(label, where)
    ident = record.get(options.id_column) if options.id_column else None
    return ClassifyExample(str(ident) if not is_empty(ident) else fallback,
                           options.text_separator.join(parts), numeric, categorical, label)


# ---------------------------------------------------------------------------------------------------------
# The fitted state: what a run keeps so predict/serve/export transform inputs exactly as training did


def negative_name(options: ClassifyOptions) -> str:
    return f"not_{options.positive_label}"


def fit_state(options: ClassifyOptions, recipe: Recipe, examples: Sequence[ClassifyExample],
              report: ClassifyReport) -> dict[str, Any]:
    """Label names, class weights, numeric mean/std (after the log option) and category vocabularies from
    the train split; plain JSON-able data."""
    if options.labels:
        labels = list(options.labels)
        unknown = [k for k in report.labels if k not in labels]
        if unknown:
            raise DataError(f"{report.first_row[unknown[0]]}: column '{options.label_column}': label "
                            f"{unknown[0]!r} is not one of the configured labels ({', '.join(labels)})")
    elif options.positive_label is not None:
        labels = [negative_name(options), options.positive_label]
    else:
        labels = sorted(report.labels, key=lambda k: (len(k), k) if k.lstrip("-").isdigit() else (10**9, k))
    if len(labels) < 2:
        raise DataError(f"{report.source}: the training data has only the label(s) {labels}; a classifier needs "
                        "at least two classes")
    counts = np.array([report.labels.get(k, 0) for k in labels], dtype=np.float64)
    if options.class_weights == "none":
        weights = None
    elif options.class_weights == "balanced":
        weights = (counts.sum() / (len(labels) * np.maximum(counts, 1))).round(6).tolist()
    else:
        weights = [float(w) for w in options.class_weights.split(",")]
        if len(weights) != len(labels):
            raise ConfigError(f"config key 'classify.class_weights': {len(weights)} weights for {len(labels)} "
                              f"classes ({', '.join(labels)})")
    numeric = np.array([e.numeric for e in examples], dtype=np.float64).reshape(len(examples), -1)
    numeric = log_columns(numeric, options)
    means, stds = [], []
    for j, name in enumerate(options.numeric_columns):
        column = numeric[:, j][~np.isnan(numeric[:, j])]
        if column.size == 0:
            raise DataError(f"{report.source}: column '{name}' is empty in every training row; drop it from "
                            "numeric_columns")
        means.append(float(column.mean()))
        stds.append(float(column.std()) or 1.0)
    vocab = []
    for j in range(len(options.categorical_columns)):
        seen = Counter(e.categorical[j] for e in examples if e.categorical[j] is not None)
        vocab.append([v for v, n in seen.most_common(MAX_CATEGORIES) if n >= MIN_CATEGORY_COUNT])
    return {"labels": labels, "class_weights": weights, "numeric_columns": list(options.numeric_columns),
            "numeric_mean": means, "numeric_std": stds, "log_scale": list(options.log_scale),
            "categorical_columns": list(options.categorical_columns), "vocab": vocab,
            "recipe": recipe.to_dict(), "fusion": options.fusion}


def log_columns(numeric: np.ndarray, options: ClassifyOptions | Any) -> np.ndarray:
    out = numeric.copy()
    for j, name in enumerate(options.numeric_columns):
        if name in options.log_scale:
            out[:, j] = np.sign(out[:, j]) * np.log1p(np.abs(out[:, j]))
    return out


def tabular_arrays(numeric: np.ndarray, categorical: Sequence[Sequence[str | None]], state: dict[str, Any],
                   options: Any) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs: float32 ``[standardised values, missing flags]`` and int64 category ids (0: unknown)."""
    n = len(categorical)
    values = log_columns(np.asarray(numeric, dtype=np.float64).reshape(n, -1), options)
    missing = np.isnan(values)
    mean = np.asarray(state["numeric_mean"], dtype=np.float64)
    std = np.asarray(state["numeric_std"], dtype=np.float64)
    scaled = np.where(missing, 0.0, (values - mean) / std) if values.shape[1] else values
    num = np.concatenate([scaled, missing.astype(np.float64)], axis=1).astype(np.float32)
    index = [{v: i + 1 for i, v in enumerate(vocab)} for vocab in state["vocab"]]
    cat = np.array([[index[j].get(v, 0) if v is not None else 0 for j, v in enumerate(row)] for row in categorical],
                   dtype=np.int64).reshape(n, len(index))
    return num, cat


def check_eval_labels(state: dict[str, Any], report: ClassifyReport, column: str) -> None:
    """An evaluation label the model was not trained on: an error naming where it first occurs."""
    for label, where in report.first_row.items():
        if label not in state["labels"]:
            raise DataError(f"{where}: column '{column}': label {label!r} is not one the model was trained on "
                            f"({', '.join(state['labels'])}); fix the label or retrain with it in the train data")


def recipe_of(options: ClassifyOptions, state: dict[str, Any] | None) -> Recipe:
    """A trained run's recipe (kept in its state), else the options' recipe file, else none."""
    if state is not None:
        return recipe_from_dict(state.get("recipe"), "the run's recipe")
    if options.recipe:
        from qatune.data.tabular import load_recipe

        return load_recipe(options.recipe)
    return Recipe()
