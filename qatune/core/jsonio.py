"""The one JSON writer: atomic (temp file + rename), so a crash never leaves a half-written file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | os.PathLike, data: Any, indent: int = 1, default: Any = None) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, ensure_ascii=False, default=default))
    os.replace(tmp, path)
