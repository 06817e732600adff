"""The one atomic writer (temp file + rename: a crash never leaves a half-written file) and its JSON form."""

from __future__ import annotations

import json
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


def write_json(path: str | os.PathLike, data: Any, indent: int = 1, default: Any = None) -> None:
    """Atomic: a crash or a full disk never leaves a half-written JSON file in place of a good one."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False, default=default))
