"""``qatune train``: flags and/or a YAML config, plus ``key=value`` overrides (``lora.r=16``)."""

from __future__ import annotations

import argparse
from typing import Any

from qatune.cli.common import add_debug, print_json

# flag -> config key (None values are "not given" and leave the YAML/default alone)
FLAGS: list[tuple[str, str, Any, str]] = [
    ("--model", "model", str, "model dir, hub id or alias (minilm)"),
    ("--method", "method", str, "full, lora, loha, ia3, prefix, ptuning, prompt, lora-lastN, peft"),
    ("--train", "train", str, "training data (SQuAD JSON/.gz, JSONL, CSV, parquet, saved dataset, hub name)"),
    ("--eval", "eval", str, "evaluation data (same formats)"),
    ("--output", "output", str, "run directory to write"),
    ("--max-train-samples", "max_train_samples", int, "use the first N training questions"),
    ("--max-eval-samples", "max_eval_samples", int, "use the first N evaluation questions"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--batch-size", "batch_size", int, "per-process batch size (windows)"),
    ("--learning-rate", "learning_rate", float, "peak learning rate (default: the method's)"),
    ("--grad-accum", "grad_accum", int, "gradient accumulation steps"),
    ("--seed", "seed", int, "random seed"),
    ("--precision", "precision", str, "auto (bf16 where native), bf16 or fp32"),
    ("--max-seq-length", "max_seq_length", int, "window length in tokens (384)"),
    ("--doc-stride", "doc_stride", int, "overlap between windows (128)"),
    ("--null-threshold", "null_threshold", float, "SQuAD v2 no-answer threshold (default: tuned on eval)"),
    ("--tracking-uri", "tracking_uri", str, "MLflow tracking URI (default sqlite mlflow.db beside the runs)"),
    ("--experiment", "experiment", str, "MLflow experiment name"),
    ("--register-model", "register_model", str, "register the run as a new version of this MLflow Model Registry name"),
    ("--save-steps", "save_steps", int, "also checkpoint every N steps"),
    ("--stop-after-steps", "stop_after_steps", int, "checkpoint and stop after N steps (resume later)"),
    ("--device", "device", str, "auto, cpu or cuda"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a model", description=__doc__)
    p.add_argument("--config", help="YAML config file; flags and key=value overrides win over it")
    for flag, key, typ, help_ in FLAGS:
        p.add_argument(flag, dest=key, type=typ, default=None, help=help_)
    p.add_argument("--no-eval", dest="do_eval", action="store_false", default=None, help="skip evaluation")
    p.add_argument("--no-tracking", dest="tracking", action="store_false", default=None, help="no MLflow")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the run's checkpoint")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace a finished or unfinished qatune run in --output (only the files it wrote)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides such as epochs=2 lora.r=16")
    add_debug(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qatune.config import load_config
    from qatune.training.trainer import train

    base = {key: getattr(args, key) for _, key, _, _ in FLAGS}
    for key in ("do_eval", "tracking", "resume", "overwrite"):
        base[key] = getattr(args, key)
    if args.debug:
        base["debug"] = True
    cfg = load_config(args.config, args.overrides, base)
    result = train(cfg, progress=not args.no_progress)
    summary = {"output": str(result.output_dir), "status": result.status}
    summary.update({k: result.metrics[k] for k in ("exact_match", "f1", "exact", "HasAns_f1", "NoAns_f1",
                                                  "train_time_s", "trainable_params", "registered_model")
                    if k in result.metrics})
    from qatune.runtime import is_main_process

    if is_main_process():  # under torchrun, one summary (rank 0's) rather than one per rank
        print_json(summary)
    return 0
