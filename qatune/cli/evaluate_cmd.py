"""``qatune evaluate RUN --data FILE``: official EM/F1 plus predictions.json / metrics.json / na_probs.json."""

from __future__ import annotations

import argparse

from qatune.cli.common import add_debug, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained run", description=__doc__)
    p.add_argument("run", help="run directory written by `qatune train`")
    p.add_argument("--data", required=True, help="SQuAD-format evaluation data")
    p.add_argument("--max-eval-samples", type=int, default=None, help="the first N questions")
    p.add_argument("--output", default=None, help="new or empty directory (or an earlier evaluation) for predictions.json and "
                   "metrics.json; not the run itself, whose metrics.json holds the training metrics (use RUN/eval)")
    p.add_argument("--null-threshold", type=float, default=None, help="v2 threshold (default: tuned here)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default=None, help="load the run with this backend (hf, native) instead of the one "
                   "it was trained with")
    p.add_argument("--no-progress", action="store_true")
    add_debug(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qatune.evaluation.evaluate import evaluate_run

    metrics = evaluate_run(args.run, args.data, max_eval_samples=args.max_eval_samples, output=args.output,
                           null_threshold=args.null_threshold, batch_size=args.batch_size, device=args.device,
                           precision=args.precision, progress=not args.no_progress, backend=args.backend)
    print_json(metrics)
    return 0
