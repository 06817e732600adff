"""``qatune score``: a task's official evaluation of a predictions file, offline (extractive QA: the
official SQuAD v1.1 / v2.0 scripts' metrics, same JSON keys)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qatune.cli.common import add_debug, print_json
from qatune.errors import DataError


def _read_json_map(path: str, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file {p} does not exist")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} file {p} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{what} file {p} must be a JSON object mapping question id -> value")
    return data


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="official SQuAD EM/F1 of a predictions file", description=__doc__)
    p.add_argument("--data", required=True, help="SQuAD JSON (v1.1 or v2.0, plain or .gz)")
    p.add_argument("--predictions", required=True, help="JSON {question_id: answer_text}")
    p.add_argument("--na-probs", default=None, help="v2: JSON {question_id: no-answer probability}")
    p.add_argument("--na-prob-thresh", type=float, default=1.0, help="v2: predict no-answer above this")
    p.add_argument("--version", choices=["1.1", "2.0"], default=None, help="default: detect from the data")
    p.add_argument("--task", default="extractive_qa", help="the task whose metric scores (default extractive_qa)")
    add_debug(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qatune.tasks import get_task

    task = get_task(args.task)
    preds = _read_json_map(args.predictions, "predictions")
    bad = [k for k, v in preds.items() if not isinstance(v, str)]
    if bad:
        raise DataError(f"predictions file {args.predictions}: answer for id {bad[0]!r} is not a string")
    na_probs = _read_json_map(args.na_probs, "na-probs") if args.na_probs else None
    if na_probs is not None:
        bad = [k for k, v in na_probs.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise DataError(f"na-probs file {args.na_probs}: value for id {bad[0]!r} is {na_probs[bad[0]]!r}, "
                            "not a number; give a no-answer probability per question id")
    print_json(task.score_files(args.data, preds, na_probs=na_probs, na_prob_thresh=args.na_prob_thresh,
                                version=args.version))
    return 0
