"""Classification training speed: ``qatune train --task classify`` vs a Hugging Face Trainer +
``AutoModelForSequenceClassification`` reference (padded to max_seq_length, fp32), same rows, same machine.

Both train MiniLM (full fine-tuning, text only, batch 16, lr 1e-4, 1 epoch) on the same Stack Overflow train
rows (read by qatune's reader, so the same split and text) in their own process, then report validation
accuracy on the same rows.

    python bench/classify_speed.py --train-split 2 --max-seq-length 128     # ~500 train rows, ~480 validation rows
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
from _common import SHARED, last_json, print_table, run_child  # noqa: E402

from qatune.artifacts import read_run_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = SHARED / "data" / "stackoverflow" / "train-sample.partial.csv.gz"


def split_overrides(args: argparse.Namespace) -> list[str]:
    return ["classify.fusion=none", "classify.split_modulo=100", f"classify.train_split={args.train_split}",
            f"classify.validation_split={args.validation_split}", "classify.test_split=0"]


def rows(args: argparse.Namespace) -> dict[str, tuple[list[str], list[int], list[str]]]:
    """(texts, label ids, label names) per split, read by qatune with the config's options."""
    from qatune.tasks import get_task

    section = dict(yaml.safe_load((ROOT / "configs" / "stackoverflow.yaml").read_text())["classify"])
    section.update(fusion="none", split_modulo=100, train_split=args.train_split,
                   validation_split=args.validation_split, test_split="0", recipe=str(ROOT / section["recipe"]))
    task = get_task("classify").bind({"classify": section})
    train, report = task.read(str(args.data), None)
    valid, _ = task.read(str(args.data), None, split="validation")
    labels = report.fit["labels"]
    return {name: ([e.text for e in ex], [labels.index(e.label) for e in ex], labels)
            for name, ex in (("train", train), ("validation", valid))}


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

    train_ds, valid_ds = Encoded("train"), Encoded("validation")
    steps = -(-len(train_ds) // 16)
    targs = TrainingArguments(output_dir=str(Path(args.output)), per_device_train_batch_size=16,
                              per_device_eval_batch_size=64, num_train_epochs=1, learning_rate=1e-4,
                              warmup_steps=int(0.1 * steps), weight_decay=0.01, save_strategy="no", report_to=[],
                              seed=42, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    logits = trainer.predict(valid_ds).predictions
    accuracy = float(100 * (np.asarray(logits).argmax(1) == np.array(data["validation"][1])).mean())
    print(json.dumps({"train_time_s": train_s, "rows": len(train_ds), "accuracy": accuracy}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--train-split", default="2", help="PostId %% 100 buckets of the train rows (2: ~500 rows)")
    ap.add_argument("--validation-split", default="1")
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--model", default="minilm", help="alias or local Hugging Face model directory")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="qatune's side (auto: bf16 where the hardware runs it natively, else fp32); the "
                         "reference is always fp32")
    ap.add_argument("--output", default=None)
    ap.add_argument("--reference", action="store_true", help="internal: run the HF Trainer side")
    ap.add_argument("--reuse", action="store_true", help="keep a finished qatune side in --output")
    args = ap.parse_args()
    if args.reference:
        reference(args)
        return
    work = Path(args.output or tempfile.mkdtemp(prefix="qatune-classify-speed-"))
    py = sys.executable
    ours = work / "qatune"
    cmd = [py, "-m", "qatune", "train", "--config", str(ROOT / "configs" / "stackoverflow.yaml"), "method=full",
           f"model={args.model}", f"train={args.data}", f"eval={args.data}", "learning_rate=1e-4",
           f"precision={args.precision}", f"max_seq_length={args.max_seq_length}", f"output={ours}",
           "keep_best=false", *split_overrides(args), "--overwrite"]
    result = []
    print("== qatune", file=sys.stderr, flush=True)
    if args.reuse and (ours / "metrics.json").is_file():  # a finished qatune side (its process time is unknown)
        res = {"wall_s": float("nan"), "peak_rss_mb": json.loads((ours / "metrics.json").read_text())["peak_rss_mb"]}
    else:
        res = run_child(cmd)
    metrics = json.loads((ours / "metrics.json").read_text())
    used = read_run_config(ours).get("precision_used", args.precision)
    result.append([f"qatune train --task classify (dynamic padding, length grouping, {used})", metrics["train_questions"],
                   round(res["wall_s"], 1), round(metrics["train_time_s"], 1),
                   round(metrics["train_questions"] / metrics["train_time_s"], 2), round(res["peak_rss_mb"]),
                   round(metrics["accuracy"], 2)])
    print("== reference", file=sys.stderr, flush=True)
    ref = run_child([py, __file__, "--reference", "--data", args.data, "--model", args.model,
                     "--train-split", args.train_split,
                     "--validation-split", args.validation_split, "--max-seq-length", str(args.max_seq_length),
                     "--output", str(work / "reference")])
    child = last_json(ref["stdout"])
    result.append([f"HF Trainer + AutoModelForSequenceClassification (pad {args.max_seq_length}, fp32)",
                   child["rows"], round(ref["wall_s"], 1), round(child["train_time_s"], 1),
                   round(child["rows"] / child["train_time_s"], 2), round(ref["peak_rss_mb"]),
                   round(child["accuracy"], 2)])
    print()
    print_table(["setup", "train rows", "process s", "train loop s", "rows/s (loop)", "peak RSS MB",
                 "validation accuracy"], result)
    print(f"\nspeed-up (training loop): {result[0][4] / result[1][4]:.2f}x; accuracy difference: "
          f"{result[0][6] - result[1][6]:+.2f} points")


if __name__ == "__main__":
    main()
