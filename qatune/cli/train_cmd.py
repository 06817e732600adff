"""``qatune train``: flags and/or a YAML config, plus ``key=value`` overrides (``lora.r=16``).

Besides the generic flags, every registered task's options become flags (``--doc-stride`` for extractive QA's
``qa.doc_stride``): one per field of the task's options dataclass, underscores as dashes, help from the
field's ``metadata["help"]``, list-valued fields as comma-separated strings. Tasks with an option of the same
name share its flag; a flag of an option the chosen task (``--task``) lacks is refused, naming the task(s)
that have it.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from qatune.cli.common import add_debug, print_json

# flag -> config key (None values are "not given" and leave the YAML/default alone)
FLAGS: list[tuple[str, str, Any, str]] = [
    ("--task", "task", str, "the task (default extractive_qa); its options have flags below"),
    ("--backend", "backend", str, "the model backend (default hf)"),
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
    ("--tracking-uri", "tracking_uri", str, "MLflow tracking URI (default sqlite mlflow.db beside the runs)"),
    ("--experiment", "experiment", str, "MLflow experiment name"),
    ("--save-steps", "save_steps", int, "also checkpoint every N steps"),
    ("--stop-after-steps", "stop_after_steps", int, "checkpoint and stop after N steps (resume later)"),
    ("--device", "device", str, "auto, cpu or cuda"),
]


_GENERIC = {key for _, key, _, _ in FLAGS} | {"do_eval", "tracking", "resume", "overwrite", "config", "debug",
                                            "verbose", "no_progress", "overrides", "help"}


def option_flags() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Task option name -> (its field, the registered tasks that have it), over every registered task."""
    from qatune.tasks import get_task, task_names

    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for name in task_names():
        for f in dataclasses.fields(get_task(name).options_type):
            if f.name in _GENERIC:
                continue  # a generic key of the same name wins; the option stays reachable as section.key=
            first, owners = out.setdefault(f.name, (f, []))
            owners.append(name)
            if "help" not in first.metadata and "help" in f.metadata:  # the first task that explains it
                out[f.name] = (f, owners)
    return out


def _is_list(f: dataclasses.Field) -> bool:
    return "list" in str(f.type).lower() or "tuple" in str(f.type).lower()


def _flag_type(f: dataclasses.Field) -> Any:
    """argparse type of an option flag: int/float parse as before; lists split on commas; the rest stays a
    string that the config checks (bools: true/false)."""
    from qatune.core.options import field_kind

    if _is_list(f):
        return lambda text: [part.strip() for part in text.split(",") if part.strip()]
    kind, _ = field_kind(f)
    return {"int": int, "float": float}.get(kind or "", str)


def _option_dest(name: str) -> str:
    return "task_option__" + name


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a model", description=__doc__)
    p.add_argument("--config", help="YAML config file; flags and key=value overrides win over it")
    for flag, key, typ, help_ in FLAGS:
        p.add_argument(flag, dest=key, type=typ, default=None, help=help_)
    for name, (f, owners) in option_flags().items():
        help_ = f.metadata.get("help", f"the {name} option")
        p.add_argument(f"--{name.replace('_', '-')}", dest=_option_dest(name), type=_flag_type(f), default=None,
                       metavar=name.upper(),
                       help=f"{help_} [{', '.join(owners)}]" + (" (comma-separated)" if _is_list(f) else ""))
    p.add_argument("--no-eval", dest="do_eval", action="store_false", default=None, help="skip evaluation")
    p.add_argument("--no-tracking", dest="tracking", action="store_false", default=None, help="no MLflow")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the run's checkpoint")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace a finished or unfinished qatune run in --output (only the files it wrote)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides such as epochs=2 lora.r=16")
    add_debug(p)
    p.set_defaults(handler=run)


def _chosen_task(args: argparse.Namespace) -> Any:
    """The task this command trains: ``--task``, else a ``task=`` override, else the config file's, else the
    default (the same order load_config applies)."""
    from qatune.config import read_yaml_mapping
    from qatune.tasks import get_task

    name = args.task
    for item in args.overrides or ():
        key, _, value = item.partition("=")
        if key.strip().lstrip("-") == "task" and value.strip():
            name = value.strip()
    if name is None and args.config:
        name = read_yaml_mapping(args.config).get("task")
    return get_task(str(name) if name else None)


def config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig of a ``qatune train`` command line: YAML < flags (task options into their section) <
    ``key=value`` overrides."""
    from qatune.config import load_config

    base = {key: getattr(args, key) for _, key, _, _ in FLAGS}
    for key in ("do_eval", "tracking", "resume", "overwrite"):
        base[key] = getattr(args, key)
    if args.debug:
        base["debug"] = True
    options = {name: getattr(args, _option_dest(name)) for name in option_flags()
               if getattr(args, _option_dest(name), None) is not None}
    if options:
        task = _chosen_task(args)
        owned = {f.name for f in dataclasses.fields(task.options_type)}
        flags = option_flags()
        for name in options:
            if name not in owned:
                from qatune.errors import ConfigError

                raise ConfigError(f"--{name.replace('_', '-')} is an option of task(s) {', '.join(flags[name][1])}, "
                                  f"not of task '{task.name}'; drop it or choose one of those with --task")
        base[task.section] = options  # flags win over the config file's section and its flat keys
    return load_config(args.config, args.overrides, base)


def run(args: argparse.Namespace) -> int:
    from qatune.training.trainer import train

    cfg = config_from_args(args)
    result = train(cfg, progress=not args.no_progress)
    summary = {"output": str(result.output_dir), "status": result.status}
    from qatune.tasks import get_task

    report = get_task(cfg.task).report  # the task's metric columns (QA: exact_match, f1, HasAns/NoAns F1)
    keys = [c.key for c in (*report.columns, *report.optional)] + ["exact", "train_time_s", "trainable_params"]
    summary.update({k: result.metrics[k] for k in dict.fromkeys(keys) if k in result.metrics})
    from qatune.runtime import is_main_process

    if is_main_process():  # under torchrun, one summary (rank 0's) rather than one per rank
        print_json(summary)
    return 0
