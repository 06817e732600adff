"""Tabular cells and derived columns: numbers, dates in several formats, and a YAML recipe of derived
columns, with errors that name file, row and column.

Any task with table-shaped records can use this (the classification task does). A recipe is plain data
(a YAML mapping), so a trained run keeps it in its ``qatune.yaml`` and applies the same derivation to a
predict/serve request as to the training rows::

    date_formats: ["%m/%d/%Y %H:%M:%S", "%Y-%m-%d"]   # tried in order; a date in neither is an error
    derived:
      AccountAgeDays: {op: days_between, start: OwnerCreationDate, end: PostCreationDate}
      NumTags: {op: count_nonempty, columns: [Tag1, Tag2, Tag3, Tag4, Tag5]}
      TitleWords: {op: word_count, column: Title}

Ops: ``days_between`` (end - start in days, fractional), ``count_nonempty`` (cells that are not empty),
``word_count`` (whitespace-separated words of a text cell), ``char_count`` (characters of a text cell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from qatune.errors import ConfigError, DataError

DEFAULT_DATE_FORMATS = ("%m/%d/%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")

# op -> the keys it takes (each naming one column, or "columns": a list of them)
OPS: dict[str, tuple[str, ...]] = {
    "days_between": ("start", "end"),
    "count_nonempty": ("columns",),
    "word_count": ("column",),
    "char_count": ("column",),
}


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def parse_number(value: Any, where: str, column: str) -> float:
    """A numeric cell as float; an empty cell is NaN (the caller imputes and counts it); text that is not a
    number is a DataError naming ``where`` (file and row) and the column."""
    if is_empty(value):
        return math.nan
    if isinstance(value, bool):
        raise DataError(f"{where}: column '{column}': {value!r} is not a number")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip().replace("_", "x"))  # float() accepts 1_000; a cell should not
        except ValueError:
            raise DataError(f"{where}: column '{column}': {str(value)[:40]!r} is not a number; fix the cell, "
                            "leave it empty (imputed and flagged), or drop the column from numeric_columns"
                            ) from None
    if not math.isfinite(number):
        raise DataError(f"{where}: column '{column}': {value!r} is not a finite number")
    return number


def parse_date(value: Any, formats: tuple[str, ...], where: str, column: str) -> datetime | None:
    """A date cell in any of ``formats`` (None when empty); a date in none of them names file, row, column."""
    if is_empty(value):
        return None
    text = str(value).strip()
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise DataError(f"{where}: column '{column}': date {text[:40]!r} matches none of the formats "
                    f"{', '.join(repr(f) for f in formats)}; fix the cell or add its format to the recipe's "
                    "date_formats")


@dataclass(frozen=True)
class Recipe:
    """Derived columns (name -> op spec) and the date formats ``days_between`` accepts."""

    derived: dict[str, dict[str, Any]] = field(default_factory=dict)
    date_formats: tuple[str, ...] = DEFAULT_DATE_FORMATS

    @property
    def inputs(self) -> list[str]:
        """The source columns the recipe reads, in recipe order."""
        names: list[str] = []
        for spec in self.derived.values():
            for key in OPS[spec["op"]]:
                for name in (spec[key] if key == "columns" else [spec[key]]):
                    if name not in names:
                        names.append(name)
        return names

    def to_dict(self) -> dict[str, Any]:
        return {"derived": {k: dict(v) for k, v in self.derived.items()}, "date_formats": list(self.date_formats)}

    def apply(self, record: dict[str, Any], where: str) -> dict[str, Any]:
        """``record`` plus the derived columns (a derived column the record already holds is kept as given)."""
        out = dict(record)
        for name, spec in self.derived.items():
            if not is_empty(out.get(name)):
                continue
            out[name] = self._value(spec, out, where)
        return out

    def _value(self, spec: dict[str, Any], record: dict[str, Any], where: str) -> float:
        op = spec["op"]
        if op == "days_between":
            start = parse_date(record.get(spec["start"]), self.date_formats, where, spec["start"])
            end = parse_date(record.get(spec["end"]), self.date_formats, where, spec["end"])
            if start is None or end is None:
                return math.nan  # missing input: imputed and flagged like any missing number
            return (end - start).total_seconds() / 86400.0
        if op == "count_nonempty":
            return float(sum(not is_empty(record.get(c)) for c in spec["columns"]))
        text = record.get(spec["column"])
        text = "" if is_empty(text) else str(text)
        return float(len(text.split()) if op == "word_count" else len(text))


def recipe_from_dict(data: Any, source: str) -> Recipe:
    """A checked recipe: known ops, the keys each op needs, names as strings; errors name ``source``."""
    if data is None:
        return Recipe()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a mapping with 'derived' (and optionally 'date_formats')")
    unknown = set(data) - {"derived", "date_formats"}
    if unknown:
        raise ConfigError(f"{source}: unknown recipe key(s) {sorted(unknown)}; keys: derived, date_formats")
    derived = data.get("derived") or {}
    if not isinstance(derived, dict):
        raise ConfigError(f"{source}: 'derived' must map column names to {{op: ..., ...}}")
    checked: dict[str, dict[str, Any]] = {}
    for name, spec in derived.items():
        if not isinstance(spec, dict) or spec.get("op") not in OPS:
            raise ConfigError(f"{source}: derived column '{name}': 'op' must be one of {', '.join(OPS)}")
        needed = OPS[spec["op"]]
        extra = set(spec) - {"op", *needed}
        missing = [k for k in needed if k not in spec]
        if missing or extra:
            raise ConfigError(f"{source}: derived column '{name}' ({spec['op']}) takes {', '.join(needed)}"
                              + (f"; missing {', '.join(missing)}" if missing else "")
                              + (f"; unknown {', '.join(sorted(extra))}" if extra else ""))
        if "columns" in needed and (not isinstance(spec["columns"], list) or not spec["columns"]):
            raise ConfigError(f"{source}: derived column '{name}': 'columns' must be a non-empty list")
        checked[str(name)] = {k: (list(map(str, v)) if isinstance(v, list) else (str(v) if k != "op" else v))
                              for k, v in spec.items()}
    formats = data.get("date_formats") or list(DEFAULT_DATE_FORMATS)
    if not isinstance(formats, list) or not all(isinstance(f, str) and f for f in formats):
        raise ConfigError(f"{source}: 'date_formats' must be a list of strptime formats such as '%Y-%m-%d'")
    return Recipe(checked, tuple(formats))


def load_recipe(path: str | Path) -> Recipe:
    """The recipe in a YAML file (see the module docstring)."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"recipe {path}: no such file; pass a YAML file with 'derived:' columns "
                          "(see docs/classification.md)")
    try:
        data = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return recipe_from_dict(data, f"recipe {path}")
