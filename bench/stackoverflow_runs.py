"""The Stack Overflow transformer rows of docs/results/stackoverflow: train each (method, fusion, seed) with
``qatune train --config configs/stackoverflow.yaml ...`` in its own process, score it on the test split
(PostId % 10 == 0) with ``qatune.evaluate``, and write the results table.

    python bench/stackoverflow_runs.py                      # every row not finished yet, in priority order
    python bench/stackoverflow_runs.py --only lora-r8-none,full-none --seeds 42
    python bench/stackoverflow_runs.py --table-only         # rebuild results.md/.json from finished runs

Runs go to runs/so/<label>-s<seed>/ (test metrics in .../test/). A finished row is skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import STACKOVERFLOW  # noqa: E402

DATA = str(STACKOVERFLOW)
# label -> overrides of configs/stackoverflow.yaml
ROWS: dict[str, list[str]] = {
    "lora-r8-none": ["method=lora", "classify.fusion=none"],
    "lora-r8-concat": ["method=lora", "classify.fusion=concat"],
    "full-none": ["method=full", "classify.fusion=none"],
    "full-concat": ["method=full", "classify.fusion=concat"],
    "lora-r8-text": ["method=lora", "classify.fusion=text"],
    "full-text": ["method=full", "classify.fusion=text"],
    "lora-r1-none": ["method=lora", "lora.r=1", "lora.alpha=2", "classify.fusion=none"],
    "lora-r1-concat": ["method=lora", "lora.r=1", "lora.alpha=2", "classify.fusion=concat"],
    "lora-r8-last4-none": ["method=lora", "lora.layers=4", "classify.fusion=none"],
    "lora-r8-last4-concat": ["method=lora", "lora.layers=4", "classify.fusion=concat"],
}
MULTI_SEED = ("lora-r8-none", "lora-r8-concat", "full-none", "full-concat")
# The CPU budget of the committed table (2 cores shared by 5 jobs, ~4-8 s per step at 128 tokens): ~1,000 train
# rows (PostId % 100 in 2-3: spread over the whole period, inside the canonical train split PostId % 10 in 2-9),
# 64 tokens (title + the start of the body), 1 epoch; ~500 validation rows (PostId % 100 == 1) and ~1,000 test
# rows (PostId % 100 in 0, 10), all inside the canonical validation/test splits. --budget full: the canonical
# split (PostId % 10: 2-9 train, 1 validation, 0 test) at the config's 128 tokens.
class Budget(NamedTuple):
    """One budget: the overrides of configs/stackoverflow.yaml (after the row's), where its runs go
    (runs/<runs>/<row>-s<seed>), the suffix of its result files, the baselines trained on the same rows
    (bench/stackoverflow_baseline.py) and the plot's title."""

    overrides: list[str]
    runs: str
    suffix: str
    baselines: str
    title: str


BUDGETS = {
    "small": Budget(["max_seq_length=64", "num_threads=1", "classify.train_split=2-3",
                     "classify.validation_split=1", "classify.test_split=0,10"],
                    "so", "", "baseline-small.json", "~1,000 train rows, 64 tokens, 1 epoch"),
    "full": Budget(["classify.split_modulo=10", "classify.train_split=2-9", "classify.validation_split=1",
                    "classify.test_split=0"],
                   "so-full", "-full", "baseline.json", "canonical split (40,284 train rows), 128 tokens, 1 epoch"),
}


def run_dir(label: str, seed: int, budget: str = "small") -> Path:
    return ROOT / "runs" / BUDGETS[budget].runs / f"{label}-s{seed}"


def run_one(label: str, seed: int, budget: str) -> None:
    out = run_dir(label, seed, budget)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not (out / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "qatune", "train", "--config", "configs/stackoverflow.yaml", *ROWS[label],
               *BUDGETS[budget].overrides,
               f"train={DATA}", f"eval={DATA}", f"seed={seed}", f"output={out}", "--overwrite"]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    if not (out / "test" / "metrics.json").is_file():
        code = ("import qatune; qatune.evaluate(%r, %r, output=%r, split='test', progress=False)"
                % (str(out), DATA, str(out / "test")))
        print(f"$ python -c \"{code}\"", flush=True)
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def table(budget: str = "small") -> None:
    rows, records = [], []
    for label in ROWS:
        done = []
        for seed in (42, 43, 44):
            out = run_dir(label, seed, budget)
            if (out / "test" / "metrics.json").is_file():
                train = json.loads((out / "metrics.json").read_text())
                test = json.loads((out / "test" / "metrics.json").read_text())
                done.append((seed, train, test))
                records.append({"label": label, "seed": seed, **{k: test.get(k) for k in
                                ("accuracy", "macro_f1", "log_loss", "roc_auc", "eval_loss")},
                                **{f"train_{k}": train.get(k) for k in ("train_time_s", "trainable_params",
                                   "trainable_pct", "train_loss", "best_epoch", "eval_loss", "accuracy",
                                   "train_questions")}})
        if not done:
            continue

        def stat(key: str, src: int = 2, scale: float = 1.0, fmt: str = "{:.2f}", done: list = done) -> str:
            values = [d[src][key] * scale for d in done if d[src].get(key) is not None]
            if not values:
                return ""
            if len(values) == 1:
                return fmt.format(values[0])
            return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"

        train = done[0][1]
        rows.append(f"| {label} | {len(done)} | {stat('eval_loss', fmt='{:.4f}')} | {stat('accuracy')} | "
                    f"{stat('macro_f1')} | {stat('log_loss', fmt='{:.4f}')} | {stat('roc_auc', fmt='{:.4f}')} | "
                    f"{train['trainable_params']:,} | {train['trainable_pct']:.2f}% | "
                    f"{stat('train_time_s', src=1, fmt='{:.0f}')} | {train.get('best_epoch', '')} |")
    head = ("| row | seeds | test loss | accuracy (%) | macro-F1 (%) | log loss | ROC-AUC | trainable params | "
            "relative params | train time / epoch (s) | best epoch |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = ROOT / "docs" / "results" / "stackoverflow"
    out.mkdir(parents=True, exist_ok=True)
    suffix = BUDGETS[budget].suffix
    (out / f"transformer_rows{suffix}.md").write_text(head + "\n" + "\n".join(rows) + "\n")
    (out / f"transformer_rows{suffix}.json").write_text(json.dumps(records, indent=1) + "\n")
    if records:
        plot(records, out / f"accuracy_by_row{suffix}.png", out / BUDGETS[budget].baselines, BUDGETS[budget].title)
    print(head + "\n" + "\n".join(rows))


def plot(records: list[dict], path: Path, baselines: Path, budget_title: str) -> None:
    """Test accuracy per row: each seed as a dot, the mean as a bar, the baselines of the same budget as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [lab for lab in ROWS if any(r["label"] == lab for r in records)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, lab in enumerate(labels):
        accs = [r["accuracy"] for r in records if r["label"] == lab]
        ax.bar(i, statistics.mean(accs), color="tab:blue" if "lora" in lab else "tab:orange", alpha=0.5)
        ax.scatter([i] * len(accs), accs, color="black", s=12, zorder=3)
    if baselines.is_file():
        tfidf = {k: v for k, v in json.loads(baselines.read_text())["results"].items() if k.startswith("tfidf")}
        for (name, res), style in zip(tfidf.items(), ("--", "-", ":", "-."), strict=False):
            ax.axhline(res["accuracy"], color="tab:green", linestyle=style,
                       label=f"{name}, same rows ({res['accuracy']:.1f})")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    lows = [r["accuracy"] for r in records]
    ax.set_ylim(min(lows) - 3, max(lows) + 3)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Stack Overflow open vs closed, MiniLM, {budget_title}\nbars: mean over seeds; dots: one seed each")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated row labels")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--budget", default="small", choices=list(BUDGETS), help="small: the committed table's; full: the canonical split")
    args = ap.parse_args()
    if not args.table_only:
        labels = args.only.split(",") if args.only else list(ROWS)
        seeds = [int(s) for s in args.seeds.split(",")]
        plan = [(lab, seeds[0]) for lab in labels] + [(lab, s) for s in seeds[1:] for lab in labels
                                                      if lab in MULTI_SEED]
        for label, seed in plan:
            t0 = time.perf_counter()
            run_one(label, seed, args.budget)
            print(f"{label} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
            table(args.budget)
    table(args.budget)


if __name__ == "__main__":
    main()
