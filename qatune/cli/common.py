"""Argument helpers shared by verbs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the libraries' warnings, logs and progress bars (or QATUNE_VERBOSE=1)")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
