"""``qatune evaluate RUN --data FILE``: the run's task's metrics (extractive QA: official EM/F1) plus its files
(predictions.json, na_probs.json) and metrics.json.

``qatune evaluate MODEL --task NAME --data FILE`` evaluates a base model that is not a run (zero-shot), for a
task that supports it (``Task.zero_shot``); other tasks refuse, saying to train first."""

from __future__ import annotations

import argparse

from qatune.cli.common import add_debug, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained run", description=__doc__)
    p.add_argument("run", metavar="RUN", help="run directory written by `qatune train` (or, with --task, a base "
                   "model alias/folder for a zero-shot task)")
    p.add_argument("--data", required=True, help="labelled evaluation data in a format the task reads")
    p.add_argument("--task", default=None, help="the task: checked against a run's; required for a base model")
    p.add_argument("--max-eval-samples", type=int, default=None, help="the first N questions")
    p.add_argument("--output", default=None, help="new or empty directory (or an earlier evaluation) for predictions.json and "
                   "metrics.json; not the run itself, whose metrics.json holds the training metrics (use RUN/eval)")
    p.add_argument("--null-threshold", type=float, default=None, help="v2 threshold (default: tuned here)")
    p.add_argument("--split", default="validation", help="the data's split, where the task's data has a split rule "
                   "(classification: train, validation, test; default validation)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default=None, help="load the run with this backend (hf, native) instead of the one "
                   "it was trained with; for a base model (zero-shot), the backend that loads it (default hf)")
    p.add_argument("--no-progress", action="store_true")
    add_debug(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qatune.evaluation.evaluate import evaluate_run

    metrics = evaluate_run(args.run, args.data, max_eval_samples=args.max_eval_samples, output=args.output,
                           null_threshold=args.null_threshold, batch_size=args.batch_size, device=args.device,
                           precision=args.precision, progress=not args.no_progress, task=args.task,
                           backend=args.backend, split=args.split)
    print_json(metrics)
    return 0
