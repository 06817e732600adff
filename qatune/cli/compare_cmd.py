"""``qatune compare``: every method on one budget (same data, epochs, seed, evaluation), one honest report.

Each method is one ``qatune train`` subprocess in OUTPUT/<method>/; finished methods are skipped on a rerun
(``--force`` reruns them). Flags and ``key=value`` overrides (``methods.lora.learning_rate=1e-3``) win over
the YAML. Exit status: 0 when every method finished, 1 when any failed (the report covers the rest).
"""

from __future__ import annotations

import argparse
from typing import Any

from qatune.cli.common import add_debug, print_json

# flag -> shared config key (None values are "not given" and leave the YAML/default alone)
FLAGS: list[tuple[str, str, Any, str]] = [
    ("--model", "model", str, "model dir, hub id or alias (minilm)"),
    ("--train", "train", str, "training data (same formats as qatune train)"),
    ("--eval", "eval", str, "evaluation data"),
    ("--output", "output", str, "comparison directory (default runs/compare); each method in OUTPUT/<method>"),
    ("--max-train-samples", "max_train_samples", int, "use the first N training questions"),
    ("--max-eval-samples", "max_eval_samples", int, "use the first N evaluation questions"),
    ("--epochs", "epochs", int, "training epochs (every method)"),
    ("--seed", "seed", int, "random seed (every method)"),
    ("--batch-size", "batch_size", int, "batch size (default for every method)"),
    ("--max-seq-length", "max_seq_length", int, "window length in tokens"),
    ("--precision", "precision", str, "auto, bf16 or fp32"),
    ("--device", "device", str, "auto, cpu or cuda"),
    ("--tracking-uri", "tracking_uri", str, "MLflow tracking URI (default sqlite mlflow.db beside OUTPUT)"),
    ("--experiment", "experiment", str, "MLflow experiment name"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="train every method on one budget and write a comparison report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="comparison YAML (shared keys + a methods: section); see configs/compare_squad.yaml")
    p.add_argument("--methods", help="comma-separated methods to run, in order (default: the YAML's methods:)")
    for flag, key, typ, help_ in FLAGS:
        p.add_argument(flag, dest=key, type=typ, default=None, help=help_)
    p.add_argument("--latency-questions", type=int, default=None, help="batch-1 latency over the first N eval questions (50)")
    p.add_argument("--throughput-questions", type=int, default=None, help="throughput over up to N eval questions (256)")
    p.add_argument("--no-tracking", dest="tracking", action="store_false", default=None, help="no MLflow")
    p.add_argument("--force", action="store_true", help="rerun methods that already finished")
    p.add_argument("overrides", nargs="*", help="overrides such as epochs=2 methods.lora.lora.r=16")
    add_debug(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qatune.compare.report import REPORT_FILES, summary
    from qatune.compare.runner import load_compare_spec, run_compare

    base = {key: getattr(args, key) for _, key, _, _ in FLAGS}
    base["tracking"] = args.tracking
    overrides = list(args.overrides)
    for key in ("latency_questions", "throughput_questions"):
        if getattr(args, key) is not None:
            overrides.append(f"measure.{key}={getattr(args, key)}")
    spec = load_compare_spec(args.config, base, methods=args.methods, overrides=overrides, force=args.force)
    rows = run_compare(spec)
    print_json({"output": str(spec.output), "report": [str(spec.output / f) for f in REPORT_FILES],
                "methods": summary(rows, spec.shared.get("task"))})
    return 1 if any(r["status"] != "finished" for r in rows) else 0
