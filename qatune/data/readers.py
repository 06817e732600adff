"""Format readers: JSON (plain or gzip), JSON Lines, CSV, Parquet, ``datasets`` ``save_to_disk`` folders
and Hugging Face Hub datasets, yielding flat records for a task to validate.

Every reader yields ``(where, record, fallback id)``: "where" locates the record for error messages
(file, line, row, article), the fallback id (``row-<n>``, n counting records from 1 in file order) is
used when a record has no id (None where the format requires one, e.g. SQuAD JSON). What the records
must contain, which whole-JSON documents a task knows (SQuAD's nested articles) and how messages name
the accepted sources come from the task's :class:`RecordSchema`; each task validates and repairs its
own records (e.g. :mod:`qatune.data.squad.squad_schema`). ``datasets`` and ``pyarrow`` are imported
inside the functions that need them so that importing qatune (and ``qatune --help``) stays fast.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qatune.data.jsonio import open_text, parse_json, read_json_file, unreadable
from qatune.errors import ConfigError, DataError

__all__ = ["Record", "RecordSchema", "check_max_samples", "iter_flat", "open_records", "read_json"]

# (where, record, fallback id)
Record = tuple[str, dict[str, Any], "str | None"]

_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def _no_documents(document: Any, label: str) -> Iterator[Record]:
    raise DataError(f"{label}: expected a JSON list of records, got a {type(document).__name__}.")


@dataclass(frozen=True)
class RecordSchema:
    """What a task's records look like, as far as the format readers need to know.

    ``required``: columns a table must have; ``fields``: how messages name a record's fields;
    ``json_cells``: CSV cells that hold JSON (name -> how to write it); ``read_document``: records of a
    JSON document that is not a plain list (SQuAD's ``{"data": [articles]}``).
    """

    required: tuple[str, ...]
    fields: str
    columns_hint: str
    local_sources: str
    hub_examples: str = ""
    json_cells: dict[str, str] = field(default_factory=dict)
    read_document: Callable[[Any, str], Iterator[Record]] = _no_documents

    def fields_text(self) -> str:
        return self.fields

    def accepted_sources(self) -> str:
        hub = f" such as {self.hub_examples}" if self.hub_examples else ""
        return f"{self.local_sources}, or a Hugging Face Hub dataset name{hub}"


# ----------------------------------------------------------------------------------------------------
# Choosing a reader

def check_max_samples(max_samples: int | None) -> int | None:
    if max_samples is None:
        return None
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ConfigError(
            f"max_samples must be a positive whole number of questions or None, got {max_samples!r}."
        )
    return max_samples


def open_records(
    source: str | os.PathLike[str], schema: RecordSchema, split: str | None = None, limit: int | None = None
) -> tuple[Iterator[Record], list[str]]:
    """Flat records of ``source`` and notes on what was chosen (split, hub). Picks the reader for the
    path; falls back to the hub only for names that cannot be local paths."""
    label = os.fspath(source)
    path = Path(label).expanduser()
    if path.is_dir():
        dataset, notes = _load_saved_dataset(path, label, split)
        return _iter_dataset(dataset, limit), notes
    if path.is_file():
        return _iter_file(path, label, schema), []
    if _looks_local(label, path):
        raise DataError(
            f"{label}: no such file or directory (looked for {path.resolve()}). "
            f"Check the path; accepted sources are {schema.accepted_sources()}."
        )
    dataset, notes = _load_hub_dataset(label, split, schema)
    return _iter_dataset(dataset, limit), notes


def _looks_local(label: str, path: Path) -> bool:
    """True when ``label`` is clearly meant as a local path, so a typo is not sent to the hub."""
    if label.startswith((".", "/", "~", "\\")) or path.is_absolute():
        return True
    if _format_of(path) is not None or path.suffix.lower() == ".gz":
        return True
    first = Path(label).parts[0] if Path(label).parts else ""
    return len(Path(label).parts) > 1 and Path(first).is_dir()


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return _FORMATS.get(suffixes[-1]) if suffixes else None


def _iter_file(path: Path, label: str, schema: RecordSchema) -> Iterator[Record]:
    kind = _format_of(path)
    if kind == "json":
        return _iter_json(path, label, schema)
    if kind == "jsonl":
        return _iter_jsonl(path, label, schema)
    if kind == "csv":
        return _iter_csv(path, label, schema)
    if kind == "parquet":
        return _iter_parquet(path, label, schema)
    raise DataError(
        f"{label}: unknown file type {''.join(path.suffixes) or '(no suffix)'!r}. "
        f"Accepted: {schema.accepted_sources()}."
    )


# ----------------------------------------------------------------------------------------------------
# Readers: each yields (where, record, fallback id)


def read_json(path: Path, label: str) -> Any:
    """A whole JSON document (plain or gzip), with errors that say where the file is broken."""
    return read_json_file(path, label)


def _iter_json(path: Path, label: str, schema: RecordSchema) -> Iterator[Record]:
    """A JSON list of flat records, a document the schema knows (SQuAD's articles), and JSON Lines saved
    as .json (datasets' to_json)."""
    try:
        document = read_json(path, label)
    except DataError as err:
        cause = err.__cause__
        if (
            isinstance(cause, json.JSONDecodeError)
            and cause.msg == "Extra data"
            and _first_line_is_object(path)
        ):
            yield from _iter_jsonl(path, label, schema)
            return
        raise
    if isinstance(document, list):
        yield from iter_flat(document, label, "")
        return
    yield from schema.read_document(document, label)


def _first_line_is_object(path: Path) -> bool:
    with contextlib.suppress(Exception), open_text(path) as fh:
        for line in fh:
            if line.strip():
                return isinstance(parse_json(line, str(path)), dict)
    return False


def iter_flat(items: list[Any], label: str, prefix: str) -> Iterator[Record]:
    """Records of a JSON list; ids ``row-<n>`` where a record has none."""
    for n, item in enumerate(items, start=1):
        where = f"{prefix}[{n - 1}]"
        if not isinstance(item, dict):
            raise DataError(f"{label}: {where}: expected a record object, got {type(item).__name__}.")
        yield where, item, f"row-{n}"


def _iter_jsonl(path: Path, label: str, schema: RecordSchema) -> Iterator[Record]:
    n = 0
    try:
        with open_text(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = parse_json(line, f"{label}: line {line_no}")
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{label}: line {line_no}: not valid JSON at column {exc.colno}: {exc.msg}. "
                        "Each line must hold one complete JSON object; fix or remove this line."
                    ) from exc
                if not isinstance(record, dict):
                    raise DataError(
                        f"{label}: line {line_no}: expected a JSON object with {schema.fields_text()}, "
                        f"got {type(record).__name__}."
                    )
                n += 1
                yield f"line {line_no}", record, f"row-{n}"
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise unreadable(label, exc) from exc


def _require_columns(label: str, columns: list[str], schema: RecordSchema) -> None:
    missing = [c for c in schema.required if c not in columns]
    if missing:
        raise DataError(
            f"{label}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'}). "
            f"{schema.columns_hint}"
        )


def _iter_csv(path: Path, label: str, schema: RecordSchema) -> Iterator[Record]:
    """CSV rows; structured cells (SQuAD's answers) hold JSON (or a Python literal, as pandas' to_csv writes it)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open_text(path) as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                return  # empty file: reported as "contains no questions"
            _require_columns(label, list(reader.fieldnames), schema)
            for n, row in enumerate(reader, start=1):
                where = f"row {n}"
                record: dict[str, Any] = dict(row)
                for name, hint in schema.json_cells.items():
                    record[name] = _decode_cell(record.get(name), label, where, name, hint)
                yield where, record, f"row-{n}"
    except csv.Error as exc:
        raise DataError(f"{label}: not valid CSV ({exc}). Check the quoting around that line.") from exc
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise unreadable(label, exc) from exc


def _decode_cell(cell: str | None, label: str, where: str, name: str, hint: str) -> Any:
    if cell is None or not cell.strip():
        return None  # reported by the task's validation as a missing field
    try:
        return parse_json(cell, f"{label}: {where}: field '{name}'")
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(cell.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise DataError(
            f"{label}: {where}: field '{name}' is not valid JSON ({cell[:80]!r}). {hint}"
        ) from exc


def _iter_parquet(path: Path, label: str, schema: RecordSchema) -> Iterator[Record]:
    """Parquet read in batches, so ``max_samples`` never loads the whole table."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(f"{label}: reading Parquet needs pyarrow; install it (pip install pyarrow).") from exc
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{label}: not a readable Parquet file ({type(exc).__name__}: {exc}).") from exc
    _require_columns(label, list(parquet.schema_arrow.names), schema)
    n = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield f"row {n}", row, f"row-{n}"


def _load_saved_dataset(path: Path, label: str, split: str | None) -> tuple[Any, list[str]]:
    if not any((path / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
        raise DataError(
            f"{label}: is a directory but not one written by datasets' save_to_disk "
            "(no dataset_dict.json or state.json). Pass that folder or a data file "
            "(.json, .jsonl, .csv, .parquet)."
        )
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{label}: reading a save_to_disk folder needs the datasets package.") from exc
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a damaged folder
        raise DataError(
            f"{label}: cannot load this save_to_disk folder ({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(loaded, datasets.DatasetDict):
        notes = [f"split {split!r} ignored: the folder holds a single Dataset"] if split else []
        return loaded, notes
    names = list(loaded.keys())
    if split is not None:
        if split not in loaded:
            raise DataError(
                f"{label}: no split {split!r} in this DatasetDict; available: {', '.join(names)}."
            )
        return loaded[split], []
    for candidate in ("train", "validation"):
        if candidate in loaded:
            return loaded[candidate], [f"using split {candidate!r} of {', '.join(names)}"]
    if len(names) == 1:
        return loaded[names[0]], [f"using split {names[0]!r}"]
    raise DataError(
        f"{label}: DatasetDict has no 'train' or 'validation' split; pick one of {', '.join(names)}."
    )


def _load_hub_dataset(name: str, split: str | None, schema: RecordSchema) -> tuple[Any, list[str]]:
    hint = f"To use local data, pass its path instead: {schema.local_sources}."
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"{name}: does not exist locally, and loading it from the Hugging Face Hub needs the datasets "
            f"package. {hint}"
        ) from exc
    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # offline, unknown name, unknown split: all mean "cannot get it"
        cause = f"{type(exc).__name__}: {exc}"
        raise DataError(
            f"{name}: does not exist locally, and the Hugging Face Hub could not be reached or has no such "
            f"dataset/split ({cause[:300]}). {hint}"
        ) from exc
    return dataset, [f"loaded {name!r} split {split or 'train'!r} from the Hugging Face Hub"]


def _iter_dataset(dataset: Any, limit: int | None) -> Iterator[Record]:
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    for n, row in enumerate(dataset, start=1):
        yield f"row {n}", row, f"row-{n}"
