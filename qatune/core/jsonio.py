"""The one atomic writer (temp file + rename: a crash never leaves a half-written file) and its JSON form."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary name and rename: a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any, indent: int = 1, default: Any = None, strict: bool = False) -> None:
    """Atomic: a crash or a full disk never leaves a half-written JSON file in place of a good one.
    ``strict``: NaN/Infinity (not JSON: jq, JavaScript and most parsers reject them) raise ValueError."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False, default=default,
                                       allow_nan=not strict))


def finite_or_null(data: Any, where: str = "") -> tuple[Any, list[str]]:
    """``data`` with every NaN/Infinity float replaced by None, and where they were (``train_loss``,
    ``[3].eval_loss``): a diverged run's numbers are written as strict JSON ``null``, with a note saying so."""
    if isinstance(data, float) and not math.isfinite(data):
        return None, [where or "the value"]
    if isinstance(data, dict):
        out, found = {}, []
        for key, value in data.items():
            out[key], inner = finite_or_null(value, f"{where}.{key}" if where else str(key))
            found += inner
        return out, found
    if isinstance(data, (list, tuple)):
        items, found = [], []
        for i, value in enumerate(data):
            item, inner = finite_or_null(value, f"{where}[{i}]")
            items.append(item)
            found += inner
        return items, found
    return data, []
