"""``qatune score``: the official SQuAD v1.1 / v2.0 evaluation, offline, same JSON keys."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from qatune.cli.common import add_debug
from qatune.errors import ConfigError, DataError


def _read_json_map(path: str, what: str) -> dict[str, Any]:
    """A JSON object file read through the shared safe parser, errors naming the file."""
    from qatune.data.jsonio import parse_json, unreadable

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file {p} does not exist")
    try:
        data = parse_json(p.read_text(encoding="utf-8"), f"{what} file {p}")
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} file {p} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise unreadable(f"{what} file {p}", exc) from None
    if not isinstance(data, dict):
        raise DataError(f"{what} file {p} must be a JSON object mapping question id -> value, "
                        f"got a {type(data).__name__}")
    return data


def read_predictions(path: str) -> dict[str, str]:
    """``{question_id: answer_text}``; any other value is a DataError naming the file and the id."""
    from qatune.data.jsonio import short_repr

    preds = _read_json_map(path, "predictions")
    for qid, value in preds.items():
        if not isinstance(value, str):
            raise DataError(f"predictions file {path}: answer for id {qid!r} is not a string (got "
                            f'{short_repr(value)}); give {{"question id": "answer text", ...}} ("" for no answer)')
    return preds


def read_na_probs(path: str) -> dict[str, float]:
    """``{question_id: no-answer probability}``: finite numbers only, so no ``Infinity`` reaches the output."""
    from qatune.data.jsonio import short_repr

    na_probs = _read_json_map(path, "na-probs")
    for qid, value in na_probs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"na-probs file {path}: value for id {qid!r} is {short_repr(value)}, not a number; "
                            "give a no-answer probability per question id")
        if not math.isfinite(value):
            raise DataError(f"na-probs file {path}: value for id {qid!r} is {value}, not a finite number; "
                            "give a no-answer probability (e.g. between 0 and 1) per question id")
    return na_probs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="official SQuAD EM/F1 of a predictions file", description=__doc__)
    p.add_argument("--data", required=True, help="SQuAD JSON (v1.1 or v2.0, plain or .gz)")
    p.add_argument("--predictions", required=True, help="JSON {question_id: answer_text}")
    p.add_argument("--na-probs", default=None, help="v2: JSON {question_id: no-answer probability}")
    p.add_argument("--na-prob-thresh", type=float, default=1.0, help="v2: predict no-answer above this")
    p.add_argument("--version", choices=["1.1", "2.0"], default=None,
                   help="default: the data file's declared version; without one, 2.0 when a question is "
                        "unanswerable or --na-probs is given")
    add_debug(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qatune.data.squad import load_squad_for_scoring
    from qatune.evaluation.squad_metrics import is_squad_v2, squad_v1_evaluate, squad_v2_evaluate

    if not math.isfinite(args.na_prob_thresh):
        raise ConfigError(f"--na-prob-thresh must be a finite number, got {args.na_prob_thresh}")
    dataset, declared = load_squad_for_scoring(args.data)
    preds = read_predictions(args.predictions)
    na_probs = read_na_probs(args.na_probs) if args.na_probs else None
    if args.version is None and declared == "1.1" and na_probs is not None:
        raise ConfigError(f"--na-probs is for SQuAD v2.0 scoring, but {args.data} declares version 1.1 (every "
                          "question has an answer); drop --na-probs, or pass --version 2.0 to use v2.0 rules")
    version = args.version or declared or ("2.0" if is_squad_v2(dataset) or na_probs is not None else "1.1")
    if version == "1.1":
        result = squad_v1_evaluate(dataset, preds)
    else:
        result = squad_v2_evaluate(dataset, preds, na_probs=na_probs, na_prob_thresh=args.na_prob_thresh,
                                   na_probs_source=args.na_probs)
    # strict JSON: every input number is finite, so a NaN/Infinity here is a bug, not something to print
    sys.stdout.write(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return 0
