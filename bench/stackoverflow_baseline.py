"""Classical baselines for the Stack Overflow closed-question task, on exactly qatune's split and columns.

Rows come from qatune's own reader (``task: classify`` with the options of configs/stackoverflow.yaml:
the same split rule, recipe and repairs), so the baseline and the transformer see the same data:

- TF-IDF of word 1-2 grams + logistic regression, text only (C chosen on the validation split)
- the same + the tabular columns (standardised numbers and missing flags, one-hot Tag1)
- gradient-boosted trees (scikit-learn HistGradientBoosting) on the tabular columns alone
- the majority class

    python bench/stackoverflow_baseline.py                                # canonical split: PostId % 10
    python bench/stackoverflow_baseline.py --train-split 2-3 --modulo 100 \\
        --validation-split 1 --test-split 0,10 --tag small                # the transformer rows' budget

Writes docs/results/stackoverflow/baseline[-TAG].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import STACKOVERFLOW  # noqa: E402


def load(args: argparse.Namespace) -> dict[str, tuple[list, object]]:
    from qatune.tasks import get_task

    cfg = yaml.safe_load((ROOT / "configs" / "stackoverflow.yaml").read_text())
    section = dict(cfg["classify"])
    section.update(split_modulo=args.modulo, train_split=args.train_split, validation_split=args.validation_split,
                   test_split=args.test_split, recipe=str(ROOT / section["recipe"]))
    if args.five_class:
        section.pop("positive_label")
    task = get_task("classify").bind({"classify": section})
    return {split: task.read(str(args.data), None, split=split) for split in ("train", "validation", "test")}, task


def tabular(examples: list, fit: dict, options: object) -> np.ndarray:
    from qatune.tasks.classification.data import tabular_arrays

    numeric = np.array([e.numeric for e in examples], dtype=np.float64)
    num, cat = tabular_arrays(numeric, [e.categorical for e in examples], fit, options)
    onehot = [np.eye(len(v) + 1)[cat[:, j]] for j, v in enumerate(fit["vocab"])]
    return np.hstack([num, *onehot])


def metrics(probs: np.ndarray, gold: np.ndarray, labels: list[str]) -> dict:
    from qatune.tasks.classification.metrics import classification_metrics

    m = classification_metrics(np.log(np.clip(probs, 1e-12, 1)), gold, labels)
    return {k: m.get(k) for k in ("accuracy", "macro_f1", "log_loss", "roc_auc")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(STACKOVERFLOW))
    ap.add_argument("--modulo", type=int, default=10)
    ap.add_argument("--train-split", default="2-9")
    ap.add_argument("--validation-split", default="1")
    ap.add_argument("--test-split", default="0")
    ap.add_argument("--five-class", action="store_true", help="the 5-class target instead of open vs closed")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    from scipy.sparse import csr_matrix, hstack
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    data, task = load(args)
    train, train_report = data["train"]
    fit = train_report.fit
    labels = fit["labels"]
    index = {k: i for i, k in enumerate(labels)}
    y = {s: np.array([index[e.label] for e in data[s][0]]) for s in data}
    texts = {s: [e.text for e in data[s][0]] for s in data}
    tab = {s: tabular(data[s][0], fit, task.options) for s in data}
    print(f"rows: train {len(y['train'])}, validation {len(y['validation'])}, test {len(y['test'])} "
          f"({time.perf_counter() - t0:.0f} s to read)", flush=True)

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=500_000, sublinear_tf=True, dtype=np.float32)
    x_text = {"train": vec.fit_transform(texts["train"])}
    x_text.update({s: vec.transform(texts[s]) for s in ("validation", "test")})
    rows: dict[str, dict] = {}
    for name, features in (("tfidf-lr text", x_text),
                           ("tfidf-lr text + tabular", {s: hstack([x_text[s], csr_matrix(tab[s])]).tocsr()
                                                        for s in x_text})):
        best = None
        for c in (1.0, 4.0, 16.0):  # chosen on validation accuracy
            model = LogisticRegression(C=c, max_iter=2000)
            model.fit(features["train"], y["train"])
            acc = float((model.predict(features["validation"]) == y["validation"]).mean())
            if best is None or acc > best[0]:
                best = (acc, c, model)
        acc, c, model = best
        rows[name] = {**metrics(model.predict_proba(features["test"]), y["test"], labels), "C": c,
                      "validation_accuracy": 100 * acc}
        print(name, rows[name], flush=True)
    gbt = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0)
    gbt.fit(tab["train"], y["train"])
    rows["gbt tabular only"] = metrics(gbt.predict_proba(tab["test"]), y["test"], labels)
    print("gbt", rows["gbt tabular only"], flush=True)
    majority = np.bincount(y["train"], minlength=len(labels)) / len(y["train"])
    rows["majority class"] = metrics(np.tile(majority, (len(y["test"]), 1)), y["test"], labels)

    suffix = f"-{args.tag}" if args.tag else ""
    out = ROOT / "docs" / "results" / "stackoverflow"
    out.mkdir(parents=True, exist_ok=True)
    info = {"split": {"modulo": args.modulo, "train": args.train_split, "validation": args.validation_split,
                      "test": args.test_split}, "rows": {s: int(len(y[s])) for s in y}, "labels": labels,
            "results": rows, "seconds": round(time.perf_counter() - t0, 1)}
    (out / f"baseline{suffix}.json").write_text(json.dumps(info, indent=1) + "\n")
    lines = ["| baseline | accuracy (%) | macro-F1 (%) | log loss | ROC-AUC |", "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        auc = f"{r['roc_auc']:.4f}" if r.get("roc_auc") is not None else ""
        lines.append(f"| {name} | {r['accuracy']:.2f} | {r['macro_f1']:.2f} | {r['log_loss']:.4f} | {auc} |")
    (out / f"baseline{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
