"""``qatune score``: a task's official evaluation of a predictions file, offline (extractive QA: the
official SQuAD v1.1 / v2.0 scripts' metrics, same JSON keys)."""

from __future__ import annotations

import argparse
import json
import math
import sys

from qatune.cli.common import add_debug
from qatune.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="official SQuAD EM/F1 of a predictions file", description=__doc__)
    p.add_argument("--data", required=True, help="SQuAD JSON (v1.1 or v2.0, plain or .gz)")
    p.add_argument("--predictions", required=True, help="JSON {question_id: answer_text}")
    p.add_argument("--na-probs", default=None, help="v2: JSON {question_id: no-answer probability}")
    p.add_argument("--na-prob-thresh", type=float, default=1.0, help="v2: predict no-answer above this")
    p.add_argument("--version", choices=["1.1", "2.0"], default=None,
                   help="default: the data file's declared version; without one, 2.0 when a question is "
                        "unanswerable or --na-probs is given")
    p.add_argument("--task", default="extractive_qa", help="the task whose metric scores (default extractive_qa)")
    add_debug(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qatune.tasks import get_task

    if not math.isfinite(args.na_prob_thresh):
        raise ConfigError(f"--na-prob-thresh must be a finite number, got {args.na_prob_thresh}")
    result = get_task(args.task).score_files(args.data, args.predictions, na_probs=args.na_probs,
                                             na_prob_thresh=args.na_prob_thresh, version=args.version)
    # strict JSON: every input number is finite, so a NaN/Infinity here is a bug, not something to print
    sys.stdout.write(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return 0
