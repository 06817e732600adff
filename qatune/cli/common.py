"""Argument helpers shared by verbs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the libraries' warnings, logs and progress bars (or QATUNE_VERBOSE=1)")


def _non_finite(data: Any) -> tuple[str, float] | None:
    """Where the first NaN/Infinity sits in ``data`` (e.g. ``["parity"]["tolerance"]``), and its value."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return where or "the value", value
        if isinstance(value, dict):
            stack.extend((f"{where}[{k!r}]", v) for k, v in reversed(value.items()))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def to_json(data: Any, **kwargs: Any) -> str:
    """Strict JSON text: ``NaN``/``Infinity`` are not JSON and break jq, JavaScript and most parsers.

    Every user input that could carry one is refused where it enters (qatune.ranges), so one that gets here
    is a qatune bug: it is raised naming where it sits rather than printed.
    """
    try:
        return json.dumps(data, allow_nan=False, **kwargs)
    except ValueError:
        found = _non_finite(data)
        if found is None:
            raise
        raise ValueError(f"refusing to print non-standard JSON: {found[0]} is {found[1]} (not a finite number); "
                         "this is a qatune bug, please report it with the command") from None


def print_json(data: Any) -> None:
    sys.stdout.write(to_json(data, indent=2, ensure_ascii=False) + "\n")
