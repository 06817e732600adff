"""The ``classify:`` config section: which columns are text, label, numeric and categorical, how the
tabular columns reach the model (fusion), the split rule, class weights and a derived-column recipe.

Every field becomes a ``qatune train`` flag (``text_columns`` -> ``--text-columns``; lists take
comma-separated strings) and a key of the section; given at the top level of a YAML config it moves here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from qatune.errors import ConfigError

FUSIONS = ("none", "concat", "text")
SPLIT_BY = ("mod", "hash", "value")
POOLING = ("mean", "cls")
SPLITS = ("train", "validation", "test")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ClassifyOptions:
    text_columns: list[str] = field(default_factory=lambda: ["text"],
                                    metadata=_help("text column(s), joined with text_separator"))
    label_column: str = field(default="label", metadata=_help("the label column (class names or numbers)"))
    numeric_columns: list[str] = field(default_factory=list, metadata=_help(
        "numeric tabular columns (standardised with train statistics; empty cells imputed and flagged)"))
    categorical_columns: list[str] = field(default_factory=list, metadata=_help(
        "categorical tabular columns (learned embeddings, with an unknown bucket)"))
    log_scale: list[str] = field(default_factory=list, metadata=_help(
        "numeric columns with heavy tails: sign(x)*log1p(|x|) before standardising"))
    fusion: str = field(default="concat", metadata=_help(
        "how tabular columns reach the model: none (text only), concat (beside the pooled text before the "
        "head), text (written out as text before the text columns)"))
    positive_label: str | None = field(default=None, metadata=_help(
        "binary target: this label value vs every other value"))
    labels: list[str] = field(default_factory=list, metadata=_help(
        "class names in order (default: sorted training labels; with positive_label: not_<positive>,<positive>)"))
    class_weights: str = field(default="none", metadata=_help(
        "loss weights per class: none, balanced (inverse frequency) or comma-separated numbers in label order"))
    text_separator: str = field(default="\n", metadata=_help("joins the text columns"))
    id_column: str | None = field(default=None, metadata=_help("column with a unique id per row (default: row-N)"))
    split_column: str | None = field(default=None, metadata=_help(
        "column that decides each row's split (none: each file is one split: --train/--eval)"))
    split_by: str = field(default="mod", metadata=_help(
        "mod: integer column modulo split_modulo; hash: SHA-1 of the value modulo split_modulo; value: the "
        "column holds train/validation/test"))
    split_modulo: int = field(default=10, metadata=_help("buckets for split_by mod/hash"))
    train_split: str = field(default="2-9", metadata=_help("buckets of the train split, e.g. 2-9 or 2,3,4"))
    validation_split: str = field(default="1", metadata=_help("buckets of the validation split"))
    test_split: str = field(default="0", metadata=_help("buckets of the test split"))
    recipe: str | None = field(default=None, metadata=_help(
        "YAML recipe of derived columns (qatune/data/tabular.py), kept in the run for predict/serve"))
    pooling: str = field(default="mean", metadata=_help("text pooling: mean over tokens or the first token"))
    head_dropout: float = field(default=0.1, metadata=_help("dropout before the classification head"))


LIST_FIELDS = ("text_columns", "numeric_columns", "categorical_columns", "log_scale", "labels")


def as_list(key: str, value: Any) -> list[str]:
    """A list option from YAML (a list) or the command line (``a,b,c``)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                for v in value):
        return [str(v).strip() for v in value]
    raise ConfigError(f"config key 'classify.{key}': {value!r} is not a list of names (YAML list or a,b,c)")


def buckets(key: str, spec: str, modulo: int) -> set[int]:
    """``2-9`` / ``0`` / ``2,3,5-7`` as a set of buckets in [0, modulo)."""
    out: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ConfigError(f"config key 'classify.{key}': {spec!r} is not a bucket list such as 2-9 or 0,1"
                              ) from None
        if not 0 <= first <= last < modulo:
            raise ConfigError(f"config key 'classify.{key}': {part!r} must lie in [0, {modulo - 1}] (split_modulo "
                              f"{modulo})")
        out.update(range(first, last + 1))
    return out


def resolve_options(values: dict[str, Any]) -> ClassifyOptions:
    """Checked options: lists normalised, choices and the split buckets validated (disjoint)."""
    values = dict(values)
    for key in LIST_FIELDS:
        if key in values:
            values[key] = as_list(key, values[key])
    options = ClassifyOptions(**values)
    for key, allowed in (("fusion", FUSIONS), ("split_by", SPLIT_BY), ("pooling", POOLING)):
        if getattr(options, key) not in allowed:
            raise ConfigError(f"config key 'classify.{key}': {getattr(options, key)!r} is not one of "
                              f"{', '.join(allowed)}")
    if not options.text_columns:
        raise ConfigError("config key 'classify.text_columns' is empty; name at least one text column")
    if not 0 <= options.head_dropout < 1:
        raise ConfigError(f"config key 'classify.head_dropout' must be in [0, 1), got {options.head_dropout}")
    if options.split_modulo < 2:
        raise ConfigError(f"config key 'classify.split_modulo' must be >= 2, got {options.split_modulo}")
    tabular = options.numeric_columns + options.categorical_columns
    for name in options.log_scale:
        if name not in options.numeric_columns:
            raise ConfigError(f"config key 'classify.log_scale': '{name}' is not one of numeric_columns "
                              f"({', '.join(options.numeric_columns) or 'none'})")
    clash = [c for c in tabular if c in options.text_columns or c == options.label_column]
    duplicated = sorted({c for c in tabular if tabular.count(c) > 1})
    if clash or duplicated:
        raise ConfigError(f"config section 'classify': column(s) {', '.join(clash + duplicated)} named twice "
                          "(a column is text, label, numeric or categorical, once)")
    if options.class_weights not in ("none", "balanced"):
        try:
            weights = [float(w) for w in options.class_weights.split(",")]
        except ValueError:
            raise ConfigError(f"config key 'classify.class_weights': {options.class_weights!r} is not none, "
                              "balanced or comma-separated numbers") from None
        if any(not w > 0 for w in weights):
            raise ConfigError("config key 'classify.class_weights': every weight must be > 0")
    if options.split_column and options.split_by != "value":
        seen: dict[int, str] = {}
        for key in ("train_split", "validation_split", "test_split"):
            for b in buckets(key, getattr(options, key), options.split_modulo):
                if b in seen:
                    raise ConfigError(f"config keys 'classify.{seen[b]}' and 'classify.{key}' share bucket {b}")
                seen[b] = key
    return options


def options_dict(options: ClassifyOptions) -> dict[str, Any]:
    return dataclasses.asdict(options)
