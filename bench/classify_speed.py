"""Classification training speed: ``qatune train --task classify`` vs a Hugging Face Trainer +
``AutoModelForSequenceClassification`` reference (padded to max_seq_length, fp32), same rows, same machine.

The reference trains MiniLM (full fine-tuning, text only, batch 16, lr 1e-4, 1 epoch) on Stack Overflow train rows
read by qatune's reader (so both sides see the same split and text), each side in its own process; both are scored
on the same validation rows (and test rows with --test-split). qatune runs one or more recipes (--recipes):
``same`` is the reference's own recipe, so its ratio is the code's; the others are qatune's recipes that train
less of the network, so their ratio is worth quoting only beside their accuracy difference.

    python bench/classify_speed.py --train-split 2 --max-seq-length 128     # ~500 train rows, ~480 validation rows
    python bench/classify_speed.py --split-modulo 10 --train-split 2-3 --test-split 0 \\
        --recipes lora-last2,lora-last2-64 --output /tmp/cspeed-10k            # 10,122 train rows, scored on test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import STACKOVERFLOW, last_json, print_table, run_child  # noqa: E402

from qatune.artifacts import read_run_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# qatune's side: overrides of configs/stackoverflow.yaml after the shared ones (model, data, split, max_seq_length)
RECIPES = {
    "same": ["method=full", "learning_rate=1e-4", "classify.fusion=none"],
    "lora-last2": ["method=lora", "lora.layers=2", "classify.fusion=concat"],
    "lora-last2-64": ["method=lora", "lora.layers=2", "classify.fusion=concat", "max_seq_length=64"],
    "lora-last2-64-nodrop": ["method=lora", "lora.layers=2", "classify.fusion=concat", "max_seq_length=64",
                             "hidden_dropout=0"],
    "lora-last4": ["method=lora", "lora.layers=4", "classify.fusion=concat"],
}


def split_options(args: argparse.Namespace) -> dict[str, object]:
    """The split rule both sides read: the ``classify:`` keys (qatune's overrides, the reference's reader)."""
    return {"split_modulo": args.split_modulo, "train_split": args.train_split,
            "validation_split": args.validation_split, "test_split": args.test_split or "0"}


def rows(args: argparse.Namespace) -> dict[str, tuple[list[str], list[int], list[str]]]:
    """(texts, label ids, label names) per split, read by qatune with the config's options, text only."""
    from qatune.tasks import get_task

    section = dict(yaml.safe_load((ROOT / "configs" / "stackoverflow.yaml").read_text())["classify"])
    section.update(split_options(args), fusion="none", recipe=str(ROOT / section["recipe"]))
    task = get_task("classify").bind({"classify": section})
    train, report = task.read(str(args.data), None)
    labels = report.fit["labels"]
    splits = {"train": train, "validation": task.read(str(args.data), None, split="validation")[0]}
    if args.test_split:
        splits["test"] = task.read(str(args.data), None, split="test")[0]
    return {name: ([e.text for e in ex], [labels.index(e.label) for e in ex], labels) for name, ex in splits.items()}


def reference(args: argparse.Namespace) -> None:
    """The HF Trainer side (run in a child process): prints one JSON line."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from qatune.backends.hf.models import resolve_model

    data = rows(args)
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(data["train"][2]))

    class Encoded(torch.utils.data.Dataset):
        """Rows padded to max_seq_length up front, as a plain torch dataset (the Trainer stacks them)."""

        def __init__(self, split: str) -> None:
            texts, labels, _ = data[split]
            self.enc = {**tokenizer(texts, padding="max_length", truncation=True, max_length=args.max_seq_length),
                        "labels": labels}

        def __len__(self) -> int:
            return len(self.enc["labels"])

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {k: torch.tensor(v[i]) for k, v in self.enc.items()}

    train_ds = Encoded("train")
    steps = -(-len(train_ds) // 16)
    targs = TrainingArguments(output_dir=str(Path(args.output)), per_device_train_batch_size=16,
                              per_device_eval_batch_size=64, num_train_epochs=1, learning_rate=1e-4,
                              warmup_steps=int(0.1 * steps), weight_decay=0.01, save_strategy="no", report_to=[],
                              seed=42, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds)
    t0 = time.perf_counter()
    trainer.train()
    result = {"train_time_s": time.perf_counter() - t0, "rows": len(train_ds)}
    for split in [s for s in ("validation", "test") if s in data]:
        logits = np.asarray(trainer.predict(Encoded(split)).predictions)
        result[f"{split}_accuracy"] = float(100 * (logits.argmax(1) == np.array(data[split][1])).mean())
    print(json.dumps(result))


def qatune_side(args: argparse.Namespace, recipe: str, out: Path) -> list[object]:
    """Train one qatune recipe in a child process (and score its test rows); its table row."""
    py = sys.executable
    cmd = [py, "-m", "qatune", "train", "--config", str(ROOT / "configs" / "stackoverflow.yaml"),
           f"model={args.model}", f"train={args.data}", f"eval={args.data}", f"precision={args.precision}",
           f"max_seq_length={args.max_seq_length}", f"output={out}", "keep_best=false",
           *(f"classify.{key}={value}" for key, value in split_options(args).items()),
           *RECIPES[recipe], "--overwrite"]
    print(f"== qatune, recipe {recipe}", file=sys.stderr, flush=True)
    reused = args.reuse and (out / "metrics.json").is_file()  # a finished side: its process time is unknown
    res = None if reused else run_child(cmd)
    metrics = json.loads((out / "metrics.json").read_text())
    if res is None:
        res = {"wall_s": float("nan"), "peak_rss_mb": metrics["peak_rss_mb"]}
    test = float("nan")
    if args.test_split:
        if not (out / "test" / "metrics.json").is_file():
            run_child([py, "-m", "qatune", "evaluate", str(out), "--data", str(args.data), "--split", "test",
                       "--output", str(out / "test"), "--no-progress"])
        test = round(json.loads((out / "test" / "metrics.json").read_text())["accuracy"], 2)
    config = read_run_config(out)
    layers = (config.get("lora") or {}).get("layers") if config["method"] == "lora" else None
    label = (f"qatune, {recipe}: {config['method']}{f' (last {layers} layers)' if layers else ''}, fusion "
             f"{config['classify']['fusion']}, {config['max_seq_length']} tokens, {config.get('precision_used')}")
    return [label, metrics["train_questions"], round(res["wall_s"], 1), round(metrics["train_time_s"], 1),
            round(metrics["train_questions"] / metrics["train_time_s"], 2), round(res["peak_rss_mb"]),
            round(metrics["accuracy"], 2), test]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(STACKOVERFLOW))
    ap.add_argument("--split-modulo", type=int, default=100, help="PostId %% N decides each row's split")
    ap.add_argument("--train-split", default="2", help="buckets of the train rows (modulo 100, 2: ~500 rows)")
    ap.add_argument("--validation-split", default="1")
    ap.add_argument("--test-split", default=None, help="buckets of test rows to score both sides on (default: none)")
    ap.add_argument("--max-seq-length", type=int, default=128, help="the reference's (and qatune's unless a "
                    "recipe sets its own)")
    ap.add_argument("--recipes", default="same", help=f"qatune's recipes, comma-separated: {', '.join(RECIPES)}")
    ap.add_argument("--model", default="minilm", help="alias or local Hugging Face model directory")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="qatune's side (auto: bf16 where the hardware runs it natively, else fp32); the "
                         "reference is always fp32")
    ap.add_argument("--output", default=None)
    ap.add_argument("--reference", action="store_true", help="internal: run the HF Trainer side")
    ap.add_argument("--reuse", action="store_true", help="keep finished qatune sides in --output")
    args = ap.parse_args()
    if args.reference:
        reference(args)
        return
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown or not recipes:
        ap.error(f"--recipes: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(RECIPES)}")
    work = Path(args.output or tempfile.mkdtemp(prefix="qatune-classify-speed-"))
    result = [qatune_side(args, recipe, work / ("qatune" if recipe == "same" else f"qatune-{recipe}"))
              for recipe in recipes]
    print("== reference", file=sys.stderr, flush=True)
    ref_cmd = [sys.executable, __file__, "--reference", "--data", args.data, "--model", args.model,
               "--split-modulo", str(args.split_modulo), "--train-split", args.train_split,
               "--validation-split", args.validation_split, "--max-seq-length", str(args.max_seq_length),
               "--output", str(work / "reference")]
    ref = run_child(ref_cmd + (["--test-split", args.test_split] if args.test_split else []))
    child = last_json(ref["stdout"])
    result.append([f"HF Trainer + AutoModelForSequenceClassification: full, text only, pad {args.max_seq_length}, fp32",
                   child["rows"], round(ref["wall_s"], 1), round(child["train_time_s"], 1),
                   round(child["rows"] / child["train_time_s"], 2), round(ref["peak_rss_mb"]),
                   round(child["validation_accuracy"], 2), round(child.get("test_accuracy", float("nan")), 2)])
    print()
    print_table(["setup", "train rows", "process s", "train loop s", "rows/s (loop)", "peak RSS MB",
                 "validation accuracy", "test accuracy"], result)
    base = result[-1]
    for row in result[:-1]:
        print(f"\n{row[0]}: {row[4] / base[4]:.2f}x the reference's rows/s (training loop); accuracy "
              f"{row[6] - base[6]:+.2f} points on validation" + (f", {row[7] - base[7]:+.2f} on test" if args.test_split else ""))


if __name__ == "__main__":
    main()
